"""The CLI verbs, the demo on the embedded data, stage verbs against `build`, and the wheel layout."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

import smartbrush
from smartbrush.cli import VERBS, main
from smartbrush.pipeline.commands.build import run_build, run_ingest, run_shard
from smartbrush.pipeline.storage.manifest import read_manifest
from smartbrush.pipeline.commands.verify import main as verify_main
from tests.conftest import MULTI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("verb", [v for v in VERBS if v != "ingest"] + ["ingest coco", "ingest openimages"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main(verb.split() + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: smartbrush" in out and len(out) > 200


def test_unknown_verb_exit_code(capsys):
    assert main(["frobnicate"]) == 2
    assert main([]) == 0 and "verbs:" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_builds_verifies_and_previews(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)] + MULTI) == 0
    text = capsys.readouterr().out
    assert "verify: OK" in text and "sources: coco 20, openimages 4" in text
    m = read_manifest(str(out))  # one COCO object is 6 px long at R = 256 (docs/crop-policy.md)
    assert m["counts"] == {"inputs": 25, "written": 24, "rejected": {}, "filtered": {"too_small_at_resolution": 1}}
    from PIL import Image

    with Image.open(out / "preview.png") as im:
        assert im.width == 160 * 6 and im.height == 12 * (160 + 28)
    assert main(["verify", str(out)]) == 0
    # a flipped byte in a shard is caught
    shard = out / m["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_main([str(out)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.slow
def test_stage_verbs_give_the_build_s_shards(tmp_path):
    from smartbrush.pipeline.commands.demo import sample_build_args

    args = sample_build_args(str(tmp_path / "build"), str(tmp_path / "inputs"))
    run_build(args + ["--config", "small"] + MULTI)
    # ingest (both sources, one job each) -> shard from the build's own instance table
    source_args = args[:-2]
    run_ingest(source_args[:6] + ["--out", str(tmp_path / "table-coco")] + MULTI, source="coco")
    table = read_manifest(str(tmp_path / "table-coco"))
    assert table["kind"] == "instance_table" and table["counts"]["written"] == 21
    run_shard(["--table", str(tmp_path / "build" / "instances"), "--out", str(tmp_path / "reshard"),
               "--config", "small"] + MULTI)
    a, b = read_manifest(str(tmp_path / "build")), read_manifest(str(tmp_path / "reshard"))
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert b["counts"]["inputs"] == b["counts"]["written"] + 1 == 25  # 1 too_small_at_resolution
    # re-render at another resolution from the table alone
    run_shard(["--table", str(tmp_path / "build" / "instances"), "--out", str(tmp_path / "r128"),
               "--config", "small", "--resolution", "128"] + MULTI)
    shard = read_manifest(str(tmp_path / "r128"))
    assert shard["config"]["render"]["resolution"] == 128 and shard["counts"]["written"] == 24


@pytest.mark.slow
def test_wheel_holds_only_the_smartbrush_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), ROOT], check=True)
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    outside = [n for n in names if not (n.startswith("smartbrush/") or n.startswith(f"smartbrush-{smartbrush.__version__}.dist-info/"))]
    assert outside == []
    for expected in ("smartbrush/pipeline/commands/build.py", "smartbrush/pipeline/transforms/shards.py", "smartbrush/schemas/manifest.py", "smartbrush/model/__init__.py",
                     "smartbrush/presets/schedules/smartbrush.yaml", "smartbrush/sample_data/instances_sample.json",
                     "smartbrush/sample_data/openimages/masks/00b4bda029a7aeda_m0pg52_bf988231.png"):
        assert expected in names
    assert not [n for n in names if "/tests/" in n or "/benchmarks/" in n]
    entry = [n for n in names if n.endswith("entry_points.txt")][0]
    assert "smartbrush = smartbrush.cli:entry" in zipfile.ZipFile(tmp_path / wheel).read(entry).decode()
