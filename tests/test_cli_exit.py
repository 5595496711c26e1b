"""Every read-only verb exits with its real status when run the way a user runs it: the console script
as its own process, many times (an abort at interpreter exit shows only as a status, never in-process)."""

import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from smartbrush.pipeline.commands import demo

RUNS = 50
PARALLEL = 4
SCRIPT = pathlib.Path(sys.executable).with_name("smartbrush")


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "set"
    assert demo.main(["--out", str(out)]) == 0
    return out


def _statuses(argv_of_run) -> list[tuple[int, str]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")

    def once(i):
        p = subprocess.run([str(SCRIPT), *argv_of_run(i)], capture_output=True, text=True, env=env, timeout=300)
        return p.returncode, p.stderr[-400:]

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(once, range(RUNS)))


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["verify", "stats", "preview"])
def test_read_only_verb_exits_zero_every_time(demo_set, tmp_path, verb):
    assert SCRIPT.exists(), f"{SCRIPT}: the console script is not installed (pip install -e .)"
    def argv(i):
        return [verb, str(demo_set)] + (["--out", str(tmp_path / f"sheet{i}.png")] if verb == "preview" else [])

    statuses = _statuses(argv)
    failed = [(rc, err) for rc, err in statuses if rc != 0]
    assert not failed, f"{len(failed)} of {RUNS} runs of `smartbrush {verb}` exited non-zero: {failed[:3]}"
    assert len(statuses) == RUNS
    if verb == "preview":
        assert all((tmp_path / f"sheet{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for i in range(RUNS))
