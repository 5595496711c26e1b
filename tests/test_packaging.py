"""The wheel ships every subpackage: pyproject's package list equals the folders that hold an
__init__.py (a missing one imports fine from a checkout but not on a Dataflow worker)."""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_SHIPPED = {"tests", "benchmarks", "docs", "presets", "sample_data", "build", "dist"}


def test_every_subpackage_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"smartbrush"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if not rel.parts or rel.parts[0] in NOT_SHIPPED or rel.parts[0].startswith("."):
            continue
        found.add(".".join(("smartbrush", *rel.parts)))
    assert listed == found
