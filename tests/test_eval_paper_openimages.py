"""`smartbrush bench import --format openimages-paper`: the paper's OpenImages draw (images of at least
512 px a side, one mask each) from a built shard set, samples kept byte for byte."""

from __future__ import annotations

import pytest

from smartbrush.cli import main
from smartbrush.pipeline.commands.build import run_build
from smartbrush.pipeline.commands.demo import sample_build_args
from smartbrush.schemas.manifest import read_manifest
from smartbrush.schemas.rejected import parse_table
from smartbrush.schemas.shard_sample import sample_meta
from smartbrush.schemas.shard_set import iter_samples


@pytest.mark.slow
def test_openimages_paper_draw(tmp_path):
    src = str(tmp_path / "built")
    run_build(sample_build_args(src, str(tmp_path / "in")) + ["--config", "small", "--schedule", "exact-box"])
    built = {s["__key__"]: s for s in iter_samples(src)}
    metas = {k: sample_meta(s) for k, s in built.items()}
    large = {k for k, m in metas.items() if min(m["image_size"]) >= 512}  # the 3 OpenImages images (1024 x 682..768)
    images = {(metas[k]["source"], metas[k]["image_id"]) for k in large}
    assert len(images) == 3 and {m["source"] for m in (metas[k] for k in large)} == {"openimages"}

    out = tmp_path / "paper-oi"
    assert main(["bench", "import", "--format", "openimages-paper", src, "--out", str(out)]) == 0
    assert main(["verify", str(out)]) == 0
    kept = {s["__key__"]: s for s in iter_samples(str(out))}
    assert len(kept) == 3 and set(kept) <= large
    assert {(metas[k]["source"], metas[k]["image_id"]) for k in kept} == images  # one mask per image
    for k, s in kept.items():  # byte for byte
        assert {e: v for e, v in s.items() if not e.startswith("__")} == \
            {e: v for e, v in built[k].items() if not e.startswith("__")}
    manifest = read_manifest(str(out))
    assert manifest["counts"] == {"inputs": len(built), "written": 3, "rejected": {},
                                  "filtered": {"min_image_side": len(built) - len(large),
                                               "max_instances_per_image": len(large) - 3}}
    assert manifest["mask_schedule"] == read_manifest(src)["mask_schedule"]
    rows = parse_table((out / "rejected.parquet").read_bytes())
    assert {r["record_id"] for r in rows} | set(kept) == set(built)

    again = tmp_path / "again"
    assert main(["bench", "import", "--format", "openimages-paper", src, "--out", str(again)]) == 0
    assert (again / "inpainting-000000.tar").read_bytes() == (out / "inpainting-000000.tar").read_bytes()
    other = tmp_path / "seed1"
    assert main(["bench", "import", "--format", "openimages-paper", src, "--out", str(other), "--seed", "1",
                 "--min-image-side", "700"]) == 0
    assert read_manifest(str(other))["counts"]["written"] == 1  # only the 1024 x 768 image has both sides >= 700
