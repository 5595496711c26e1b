"""The bytes of a small build are pinned: a change to any writer that moves them must bump the
format's schema version and this digest together, saying why."""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import resources

import pytest

from smartbrush.pipeline.commands.build import run_build
from smartbrush.pipeline.sources.openimages import segmentation_rows_from_masks, write_segmentation_csv
from smartbrush.schemas.shard_sample import decode_mask_png

# sha256 of the embedded sample's build (config `small`, default schedule), inputs given by
# relative paths so that no absolute path reaches the bytes.
EXPECTED = {
    "identity.json": "a8e4afa8d8a9ec1f88dd8c34c0e03345c2dbb8ddf3c18038653d45b868f94105",
    "inpainting-000000.tar": "fee3eaf7222ab966f58bb918a30bc98ff84516069ad1858f641ec8e3b6e21321",
    "inpainting-000001.tar": "a862dd410d181d904e80338bdc4e2b9c87668cd396f7788a4f384288f16a3adc",
    "manifest.json": "5f3290d1fcc72591fe41973b07224786b726fbd7c545f568c89dcbddfcc0aa21",
    "rejected.parquet": "ef9d670d0d99cf938a7a4db81ff6f9325a11b1bfe4d6802656059ba60501f9f9",
}


@pytest.mark.slow
def test_sample_build_bytes_are_pinned(tmp_path, monkeypatch):
    shutil.copytree(str(resources.files("smartbrush").joinpath("sample_data")), tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    masks = "data/openimages/masks"
    rows = segmentation_rows_from_masks(sorted(os.listdir(masks)),
                                        lambda n: decode_mask_png(open(os.path.join(masks, n), "rb").read()))
    write_segmentation_csv(rows, "seg.csv")
    run_build(["--coco-annotations", "data/instances_sample.json", "--coco-images", "data/coco",
               "--coco-split", "val2017", "--openimages-segmentations", "seg.csv", "--openimages-masks", masks,
               "--openimages-images", "data/openimages/images", "--openimages-classes", "data/openimages_classes.csv",
               "--out", "out", "--config", "small", "--runner", "FnApiRunner"])
    got = {name: hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() for name in EXPECTED}
    assert got == EXPECTED
