"""`smartbrush bench import`: BrushBench run-length masks, HD-Painter's COCO index list and plain COCO lists
become ordinary inpainting shard sets (verified, read by the benchmark reader, checked for contamination)."""

from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from smartbrush.cli import main
from smartbrush.eval import contamination
from smartbrush.eval.benchmark import read_benchmark
from smartbrush.eval.importers import CocoSplit, annotation_mask, mask_to_rle_pairs, rle_pairs_to_mask
from smartbrush.schemas.manifest import read_manifest
from smartbrush.schemas.rejected import parse_table
from tests.conftest import shared_path


def test_rle_pairs_decode_row_major_with_one_based_starts():
    mask = rle_pairs_to_mask([1, 3, 514, 2])
    expected = np.zeros((512, 512), bool)
    expected[0, 0:3] = True  # pixels 1..3: the first row
    expected[1, 1:3] = True  # pixel 514 = row 1, column 1 (row-major), for 2 pixels
    assert (mask == expected).all() and mask.sum() == 5
    assert mask_to_rle_pairs(expected) == [1, 3, 514, 2]
    rng = np.random.default_rng(0)
    blob = rng.random((512, 512)) > 0.7
    assert (rle_pairs_to_mask(mask_to_rle_pairs(blob)) == blob).all()
    with pytest.raises(ValueError, match="twos"):
        rle_pairs_to_mask([1, 2, 3])
    with pytest.raises(ValueError, match="outside"):
        rle_pairs_to_mask([512 * 512, 2])


@pytest.fixture
def brushbench(tmp_path):
    """A BrushBench-format folder: mapping_file.json and images/, masks as BrushNet writes them."""
    root = tmp_path / "BrushBench"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(root / "images" / "b.png")
    ell = np.zeros((512, 512), np.uint8)
    cv2.ellipse(ell, (200, 300), (90, 40), 30, 0, 360, 1, -1)
    rect = np.zeros((512, 512), bool)
    rect[100:300, 50:150] = True
    mapping = {
        "0": {"image": "images/a.png", "caption": "a red ball", "inpainting_mask": mask_to_rle_pairs(ell > 0),
              "outpainting_mask": mask_to_rle_pairs(ell == 0)},
        "1": {"image": "images/b.png", "caption": "a cat on a sofa", "inpainting_mask": mask_to_rle_pairs(rect),
              "outpainting_mask": mask_to_rle_pairs(~rect)},
        "2": {"image": "images/a.png", "caption": "odd", "inpainting_mask": [1, 2, 3], "outpainting_mask": []},
        "3": {"image": "images/gone.png", "caption": "missing", "inpainting_mask": [1, 2], "outpainting_mask": []},
    }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root, ell > 0, rect


def test_brushbench_import_is_a_verified_benchmark(brushbench, tmp_path):
    root, ell, rect = brushbench
    out = tmp_path / "bb"
    assert main(["bench", "import", "--format", "brushbench", str(root), "--out", str(out)]) == 0
    assert main(["verify", str(out)]) == 0
    manifest = read_manifest(str(out))
    assert manifest["counts"] == {"inputs": 4, "written": 2, "rejected": {"image_missing": 1, "invalid_rle": 1},
                                  "filtered": {}}
    mapping_sha = hashlib.sha256((root / "mapping_file.json").read_bytes()).hexdigest()
    assert [(os.path.basename(i["path"]), i["sha256"]) for i in manifest["inputs"]] == [("mapping_file.json", mapping_sha)]
    assert manifest["mask_schedule"]["levels"] == [{"type": "exact"}, {"type": "box"}]
    assert sorted(r["record_id"] for r in parse_table((out / "rejected.parquet").read_bytes())) == \
        ["brushbench_2", "brushbench_3"]
    a, b = read_benchmark(str(out))
    assert (a.key, b.key) == ("brushbench_0", "brushbench_1")
    assert (a.masks[0] == ell).all()  # decoded at 512, kept at 512
    x0, y0, x1, y1 = a.box
    ys, xs = np.nonzero(ell)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert a.masks[1].sum() == (x1 - x0) * (y1 - y0) and a.masks[1][y0:y1, x0:x1].all()
    assert a.prompt("label") == "a red ball" and b.prompt("caption") == "a cat on a sofa"
    assert b.image.shape == (512, 512, 3) and b.meta["image_size"] == [640, 480]  # resized to 512 as BrushNet does
    assert (b.masks[0] == rect).all() and b.box == [50, 100, 150, 300]
    assert a.image_sha256 == hashlib.sha256((root / "images" / "a.png").read_bytes()).hexdigest()
    assert main(["bench", "import", "--format", "brushbench", str(root), "--out", str(out)]) == 2  # not empty


def test_hd_painter_indices_follow_their_convention(tmp_path):
    coco_root = shared_path("coco_val2017_tiny")
    lst = tmp_path / "mscoco_testset.csv"
    lst.write_text("image_idx,segment_idx\n3,1\n0,0\n80,0\n0,999\n3,1\n")
    out = tmp_path / "hd"
    assert main(["bench", "import", "--format", "hd-painter", str(lst), "--coco", str(coco_root), "--out", str(out),
                 "--resolution", "64"]) == 0
    assert main(["verify", str(out)]) == 0
    manifest = read_manifest(str(out))
    assert manifest["counts"]["rejected"] == {"duplicate_instance": 1, "invalid_annotation": 1, "unknown_image": 1}
    samples = {s.key: s for s in read_benchmark(str(out))}
    # By hand from instances_val2017.json: the 4th smallest of the 80 image ids is 25603; its polygon
    # annotations in file order are 375173, 378056 (a chair in two polygons), 381772, ...
    s = samples["coco_val2017_25603_378056"]
    assert (s.meta["image_id"], s.meta["annotation_id"], s.prompt()) == ("25603", "378056", "chair")
    assert "coco_val2017_5001_" + str(CocoSplit(str(coco_root)).polygon_annotations[5001][0]["id"]) in samples
    # The mask is the convex hull of both polygons: it holds the annotation's own mask, and every row and
    # column of it is one run.
    coco = CocoSplit(str(coco_root))
    ann = coco.annotations[378056]
    im = coco.images[25603]
    own = annotation_mask(ann, im["height"], im["width"])
    assert len(ann["segmentation"]) == 2 and s.meta["area"] > own.sum()
    hull = s.masks[0]
    for line in list(hull) + list(hull.T):
        idx = np.flatnonzero(line)
        assert idx.size == 0 or idx[-1] - idx[0] + 1 == idx.size
    x0, y0, x1, y1 = s.meta["crop_window_source_xyxy"]
    assert x1 - x0 == y1 - y0 == min(im["width"], im["height"])


def test_imported_sets_take_part_in_the_contamination_check(tmp_path):
    coco_root = shared_path("coco_val2017_tiny")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_id,annotation_id\n25603,381772\n5001,999\n")
    bench = tmp_path / "pairs_bench"
    assert main(["bench", "import", "--format", "coco-pairs", str(pairs), "--coco", str(coco_root), "--out",
                 str(bench), "--resolution", "32"]) == 0
    assert read_manifest(str(bench))["counts"]["rejected"] == {"invalid_annotation": 1}
    train = tmp_path / "train_like"
    hd = tmp_path / "hd.csv"
    hd.write_text("image_idx,segment_idx\n3,0\n")  # another object of image 25603
    assert main(["bench", "import", "--format", "hd-painter", str(hd), "--coco", str(coco_root), "--out", str(train),
                 "--resolution", "32"]) == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "lineage.json").write_text(json.dumps({"schema": "smartbrush.lineage", "shard_sets": [
        {"path": str(train), "kind": "inpainting",
         "manifest_sha256": hashlib.sha256((train / "manifest.json").read_bytes()).hexdigest()}]}))
    report = contamination.check(str(run), read_benchmark(str(bench)))
    assert report.benchmark_samples_overlapping == 1
    assert {(o["benchmark_key"], o["training_key"]) for o in report.overlaps} == \
        {("coco_val2017_25603_381772", "coco_val2017_25603_375173")}
