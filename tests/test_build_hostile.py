"""A corpus holding every kind of bad input builds, and accounts for each record by reason."""

import json

import numpy as np
import pytest
import webdataset as wds

from smartbrush.pipeline.commands.build import run_build
from smartbrush.pipeline.storage.manifest import read_manifest, read_rejected
from smartbrush.schemas.shard_sample import decode_jpeg, sample_masks
from smartbrush.pipeline.commands.verify import verify_shard_set
from tests.corpus_factory import hostile_coco, hostile_openimages

pytestmark = pytest.mark.slow


def merge(a, b):
    out = {"inputs": a["inputs"] + b["inputs"], "written": a["written"] + b["written"]}
    for k in ("rejected", "filtered"):
        out[k] = {r: a[k].get(r, 0) + b[k].get(r, 0) for r in sorted(set(a[k]) | set(b[k]))}
    return out


def test_hostile_corpus_build(tmp_path, multi):
    coco_expected = hostile_coco(tmp_path / "coco")
    oi_flags, oi_expected = hostile_openimages(tmp_path / "oi")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("render:\n  resolution: 64\n  max_image_pixels: 4000000\nshards:\n  samples_per_shard: 3\n")
    out = tmp_path / "out"
    run_build(["--coco-annotations", str(tmp_path / "coco" / "instances_test.json"),
               "--coco-images", str(tmp_path / "coco" / "images"), *oi_flags,
               "--out", str(out), "--config", str(cfg), *multi])
    manifest = read_manifest(str(out))
    assert manifest["counts"] == merge(coco_expected, oi_expected)
    assert verify_shard_set(str(out)) == []
    # every shard entry carries its CRC-32 (manifest v2), and verify checks it beside the sha256
    assert manifest["schema_version"] == 2 and all(len(s["crc32"]) == 8 for s in manifest["shards"])
    raw = (out / "manifest.json").read_bytes()
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": [
        {**manifest["shards"][0], "crc32": "00000000"}, *manifest["shards"][1:]]}))
    assert [p for p in verify_shard_set(str(out)) if "CRC-32" in p] == [
        f"{manifest['shards'][0]['name']}: CRC-32 {manifest['shards'][0]['crc32']}, manifest says 00000000"]
    (out / "manifest.json").write_bytes(raw)
    rejected = read_rejected(str(out))
    assert len(rejected) == manifest["counts"]["inputs"] - manifest["counts"]["written"]
    assert all(r["detail"] or r["reason"] in ("crowd",) for r in rejected)
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    keys = sorted(s["__key__"] for s in samples)
    assert keys == sorted(["coco_test_1_101", "coco_test_1_102", "coco_test_2_109", "coco_test_3_110",
                           "coco_test_4_111", "coco_test_5_112", "openimages_train_aaaa000000000001_b0000001",
                           "openimages_train_aaaa000000000002_b0000002"])
    by_key = {s["__key__"]: s for s in samples}
    # the EXIF-rotated image was decoded in the displayed frame the annotation uses
    rot = json.loads(by_key["coco_test_5_112"]["json"])
    assert rot["image_size"] == [80, 100]
    # 16-bit and grayscale images became 3-channel 8-bit crops with real content
    for k in ("coco_test_2_109", "coco_test_3_110", "coco_test_4_111"):
        img = decode_jpeg(by_key[k]["jpg"])
        assert img.shape == (64, 64, 3) and img.std() > 5
    # the OpenImages mask, at half the image's resolution, was resized to the image
    meta = json.loads(by_key["openimages_train_aaaa000000000001_b0000001"]["json"])
    assert meta["box_source_xyxy"] == [16, 20, 60, 80] and meta["label"] == "Dog"
    for s in samples:
        levels = sample_masks(s)
        assert all(not (lo & ~hi).any() for lo, hi in zip(levels, levels[1:]))


def test_not_a_coco_file_fails_fast(tmp_path):
    bad = tmp_path / "instances_x.json"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(ValueError, match=r"instances_x.json: not a COCO instances file: top-level key 'type'"):
        run_build(["--coco-annotations", str(bad), "--coco-images", str(tmp_path), "--out", str(tmp_path / "o")])
    csv = tmp_path / "seg.csv"
    csv.write_text("ImageID,Source,LabelName,Confidence\nabc,x,/m/01,1\n")
    with pytest.raises(ValueError, match=r"seg.csv: not an OpenImages segmentation CSV"):
        run_build(["--openimages-segmentations", str(csv), "--openimages-masks", str(tmp_path),
                   "--openimages-images", str(tmp_path), "--openimages-classes", str(csv), "--out", str(tmp_path / "o")])
    np.testing.assert_equal((tmp_path / "o" / "manifest.json").exists(), False)
