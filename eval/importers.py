"""Published inpainting benchmarks read as they are published, into ImportedSample lists
(eval/bench_writer.py writes them as shard sets).

  * BrushBench and BrushNet's EditBench copy: `mapping_file.json`, {id: {image, caption,
    inpainting_mask, outpainting_mask}}; a mask is a flat list of run-length pairs (1-based start,
    length) over a 512 x 512 image, decoded row-major as BrushNet's `evaluate_brushnet.py` decodes it
    (its training code flattens column-major instead; the evaluation script is what published numbers
    come from). Images are resized to 512 x 512 (PIL bicubic, as that script does), the prompt is the
    caption.
  * HD-Painter's COCO list (`mscoco_testset_10000.csv`, columns image_idx, segment_idx), as their
    `metrics/mscoco.py` reads it: image_idx indexes the split's image ids sorted ascending, segment_idx
    that image's polygon annotations (RLE ones, so every crowd one, skipped) in file order; the mask is
    the convex hull of all the annotation's polygons (points truncated to int32, drawn filled by
    OpenCV); the prompt is the class name.
  * Plain COCO lists (columns image_id, annotation_id): the annotation's own mask (pycocotools), the
    class name as prompt; and the paper protocol's draw of such a list (`paper_coco_pairs`).
COCO images are cropped to a square window around the object (the image's shorter side, or the box's
longer side when larger, black beyond the image) and resized to the benchmark resolution.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from smartbrush.eval.bench_writer import ImportedSample, mask_box, rejection
from smartbrush.schemas import files

BRUSHBENCH_SIZE = 512
FORMATS = ("brushbench", "editbench", "hd-painter", "coco-pairs", "coco-paper", "openimages-paper")


# ------------------------------------------------------------------------------------ run-length pairs

def rle_pairs_to_mask(pairs, shape: tuple[int, int] = (BRUSHBENCH_SIZE, BRUSHBENCH_SIZE)) -> np.ndarray:
    """BrushNet's `rle2mask`: (1-based start, length) pairs over the row-major flattened image."""
    flat = np.asarray(pairs, dtype=np.int64).reshape(-1)
    if flat.size % 2:
        raise ValueError(f"{flat.size} numbers: run-length pairs come in twos")
    starts, lengths = flat[0::2] - 1, flat[1::2]
    n = shape[0] * shape[1]
    if (starts < 0).any() or (lengths < 0).any() or (starts + lengths > n).any():
        raise ValueError(f"a run lies outside the {shape[0]} x {shape[1]} image")
    mask = np.zeros(n, bool)
    for lo, length in zip(starts, lengths):
        mask[lo:lo + length] = True
    return mask.reshape(shape)


def mask_to_rle_pairs(mask: np.ndarray) -> list[int]:
    """The inverse: a bool mask's runs as (1-based start, length) pairs, row-major."""
    flat = np.concatenate([[0], np.asarray(mask, np.int8).reshape(-1), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts + 1, ends - starts) for v in pair]


# ---------------------------------------------------------------------------------------- geometry

def square_window(box, width: int, height: int) -> list[int]:
    """[x0, y0, x1, y1) square holding the box: side = max(shorter image side, longer box side), as
    centred on the box as the image allows (centred on the image along a side shorter than the square)."""
    x0, y0, x1, y1 = box
    side = max(min(width, height), x1 - x0, y1 - y0)

    def place(lo, hi, extent):
        if side > extent:
            return (extent - side) // 2
        return int(min(max(np.floor((lo + hi) / 2 - side / 2), 0), extent - side))

    wx, wy = place(x0, x1, width), place(y0, y1, height)
    return [wx, wy, wx + side, wy + side]


def crop_padded(array: np.ndarray, window) -> np.ndarray:
    x0, y0, x1, y1 = window
    h, w = array.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0) + array.shape[2:], array.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged coverage >= 1/2 (nearest when enlarging)."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    shrink = mask.shape[0] > size
    out = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
    return out >= 0.5


def read_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------------ result

@dataclass
class Imported:
    samples: list[ImportedSample] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # source files read (their sha256 go into the manifest)
    config: dict = field(default_factory=dict)


def _key(*parts) -> str:
    return "_".join(str(p) for p in parts).replace(".", "-").replace("/", "-")


# -------------------------------------------------------------------------------------- BrushBench

def read_brushbench(src: str, resolution: int = BRUSHBENCH_SIZE, mask_key: str = "inpainting_mask",
                    source: str = "brushbench") -> Imported:
    """BrushBench (or BrushNet's EditBench copy): SRC is mapping_file.json or the folder holding it; image
    paths are relative to that folder."""
    mapping_path = os.path.join(src, "mapping_file.json") if os.path.isdir(src) else src
    base = os.path.dirname(os.path.abspath(mapping_path))
    with open(mapping_path) as f:
        try:
            mapping = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{mapping_path}: not JSON ({e})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"{mapping_path}: expected {{id: {{image, caption, {mask_key}}}}}")
    res = Imported(inputs=[mapping_path], config={"format": source, "mask_key": mask_key, "resolution": resolution,
                                                  "mapping_file": os.path.abspath(mapping_path)})
    for item_id, item in mapping.items():
        key = _key(source, item_id)

        def reject(reason, detail):
            res.rejected.append(rejection(key, source, reason, detail, mapping_path))

        if not isinstance(item, dict) or not {"image", "caption", mask_key} <= set(item):
            reject("invalid_annotation", f"entry lacks image, caption or {mask_key}")
            continue
        path = os.path.join(base, item["image"])
        if not os.path.isfile(path):
            reject("image_missing", item["image"])
            continue
        try:
            rgb = read_rgb(path)
        except Exception as e:  # PIL raises several kinds on a damaged file
            reject("image_unreadable", f"{type(e).__name__}: {e}")
            continue
        try:
            mask = rle_pairs_to_mask(item[mask_key])
        except (ValueError, TypeError) as e:
            reject("invalid_rle", str(e))
            continue
        if not mask.any():
            reject("empty_mask", f"{mask_key} covers no pixel")
            continue
        h, w = rgb.shape[:2]
        image512 = resize_image(rgb, BRUSHBENCH_SIZE)
        image, small = resize_image(image512, resolution), resize_mask(mask, resolution)
        if not small.any():
            reject("empty_mask", f"{mask_key} covers no pixel at {resolution} px")
            continue
        bx = mask_box(mask)
        sx, sy = w / BRUSHBENCH_SIZE, h / BRUSHBENCH_SIZE
        caption = str(item["caption"])
        res.samples.append(ImportedSample(
            key=key, image=image, mask=small, source=source, split="", image_id=str(item_id), annotation_id=mask_key,
            image_path=str(item["image"]), image_size=[w, h], image_sha256=files.digest_file(path).sha256,
            category_id="", label=caption, captions=[{"text": caption, "model": source, "revision": "", "settings": ""}],
            area=int(mask.sum()), box_source_xyxy=[int(bx[0] * sx), int(bx[1] * sy), int(np.ceil(bx[2] * sx)),
                                                   int(np.ceil(bx[3] * sy))],
            crop_window_source_xyxy=[0, 0, w, h]))
    return res


# -------------------------------------------------------------------------------------------- COCO

class CocoSplit:
    """A COCO split's instances file, indexed as HD-Painter's MSCOCO class indexes it."""

    def __init__(self, root: str, split: str = "val2017"):
        self.root, self.split = root, split
        self.annotations_path = os.path.join(root, "annotations", f"instances_{split}.json")
        if not os.path.isfile(self.annotations_path):
            raise FileNotFoundError(f"{self.annotations_path}: no such file (the COCO folder holds "
                                    f"annotations/instances_{split}.json and {split}/)")
        with open(self.annotations_path) as f:
            data = json.load(f)
        self.images = {int(im["id"]): im for im in data["images"]}
        self.categories = {int(c["id"]): c["name"] for c in data["categories"]}
        self.image_ids = sorted(self.images)  # image_idx -> image id
        self.polygon_annotations: dict[int, list[dict]] = defaultdict(list)  # file order, RLE skipped
        self.annotations: dict[int, dict] = {}
        for ann in data["annotations"]:
            self.annotations[int(ann["id"])] = ann
            if isinstance(ann.get("segmentation"), list):
                self.polygon_annotations[int(ann["image_id"])].append(ann)

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.root, self.split, self.images[image_id]["file_name"])


def hull_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """HD-Painter's mask: the convex hull of all the annotation's polygons, points truncated to int32."""
    points = np.concatenate([np.int32(p).reshape(-1, 2) for p in annotation["segmentation"]])
    canvas = np.zeros((height, width), np.uint8)
    cv2.drawContours(canvas, [cv2.convexHull(points)], -1, 255, -1)
    return canvas > 0


def annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """The annotation's own mask (polygons or RLE), through pycocotools."""
    from pycocotools import mask as mask_utils

    seg = annotation["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def _coco_sample(coco: CocoSplit, image_id: int, ann: dict, mask: np.ndarray, rgb: np.ndarray, path: str,
                 resolution: int, sha: str) -> ImportedSample | None:
    h, w = rgb.shape[:2]
    box = mask_box(mask)
    window = square_window(box, w, h)
    image = resize_image(crop_padded(rgb, window), resolution)
    small = resize_mask(crop_padded(mask, window), resolution)
    if not small.any():
        return None
    label = coco.categories[int(ann["category_id"])]
    return ImportedSample(
        key=_key("coco", coco.split, image_id, ann["id"]), image=image, mask=small, source="coco", split=coco.split,
        image_id=str(image_id), annotation_id=str(ann["id"]), image_path=path, image_size=[w, h], image_sha256=sha,
        category_id=str(int(ann["category_id"])), label=label, captions=[], area=int(mask.sum()),
        box_source_xyxy=list(box), crop_window_source_xyxy=window)


def _coco_import(coco: CocoSplit, pairs: list[tuple[str, int | None, dict | None, str]], hull: bool,
                 resolution: int, list_path: str | None, config: dict) -> Imported:
    """`pairs`: (record id, image id or None, annotation or None, why not found) per list row."""
    res = Imported(inputs=[coco.annotations_path] + ([list_path] if list_path else []), config=config)
    where = list_path or coco.annotations_path
    seen, cache = set(), {}
    for record, image_id, ann, problem in pairs:
        if ann is None:
            res.rejected.append(rejection(record, "coco", "unknown_image" if image_id is None else "invalid_annotation",
                                          problem, where))
            continue
        key = _key("coco", coco.split, image_id, ann["id"])
        if key in seen:
            res.rejected.append(rejection(record, "coco", "duplicate_instance", f"{key} listed again", where))
            continue
        seen.add(key)
        path = coco.image_path(image_id)
        if image_id not in cache:
            if not os.path.isfile(path):
                cache[image_id] = ("image_missing", path)
            else:
                try:
                    cache[image_id] = (read_rgb(path), files.digest_file(path).sha256)
                except Exception as e:  # PIL raises several kinds on a damaged file
                    cache[image_id] = ("image_unreadable", f"{type(e).__name__}: {e}")
        rgb, sha = cache[image_id]
        if isinstance(rgb, str):
            res.rejected.append(rejection(key, "coco", rgb, sha, where))
            continue
        h, w = rgb.shape[:2]
        try:
            mask = hull_mask(ann, h, w) if hull else annotation_mask(ann, h, w)
        except Exception as e:  # malformed polygons reach OpenCV or pycocotools
            res.rejected.append(rejection(key, "coco", "invalid_polygon", f"{type(e).__name__}: {e}", where))
            continue
        sample = _coco_sample(coco, image_id, ann, mask, rgb, os.path.relpath(path, coco.root), resolution, sha) \
            if mask.any() else None
        if sample is None:
            res.rejected.append(rejection(key, "coco", "empty_mask", "no pixel at crop resolution", where))
            continue
        res.samples.append(sample)
    return res


def _read_rows(path: str, columns: tuple[str, str]) -> list[tuple[int, int]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not set(columns) <= {c.strip() for c in reader.fieldnames}:
            raise ValueError(f"{path}: a CSV with a header naming {columns[0]},{columns[1]} "
                             f"(got {reader.fieldnames})")
        rows = []
        for n, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k}
            try:
                rows.append((int(row[columns[0]]), int(row[columns[1]])))
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {n}: {columns[0]} and {columns[1]} must be integers") from None
    return rows


def read_hd_painter(src: str, coco_root: str, split: str = "val2017", resolution: int = 512) -> Imported:
    coco = CocoSplit(coco_root, split)
    pairs = []
    for image_idx, segment_idx in _read_rows(src, ("image_idx", "segment_idx")):
        record = f"image_idx={image_idx},segment_idx={segment_idx}"
        if not 0 <= image_idx < len(coco.image_ids):
            pairs.append((record, None, None, f"image_idx {image_idx}: the split has {len(coco.image_ids)} images"))
            continue
        image_id = coco.image_ids[image_idx]
        anns = coco.polygon_annotations[image_id]
        if not 0 <= segment_idx < len(anns):
            pairs.append((record, image_id, None, f"segment_idx {segment_idx}: image {image_id} has {len(anns)} "
                                                  "polygon annotations"))
            continue
        pairs.append((record, image_id, anns[segment_idx], ""))
    config = {"format": "hd-painter", "list": os.path.abspath(src), "coco": os.path.abspath(coco_root), "split": split,
              "resolution": resolution, "mask": "convex hull of the annotation's polygons"}
    return _coco_import(coco, pairs, True, resolution, src, config)


def coco_pairs_from_ids(coco: CocoSplit, rows: list[tuple[int, int]]) -> list[tuple]:
    pairs = []
    for image_id, ann_id in rows:
        record = f"image_id={image_id},annotation_id={ann_id}"
        ann = coco.annotations.get(ann_id)
        if image_id not in coco.images:
            pairs.append((record, None, None, f"image {image_id} is not in {coco.split}"))
        elif ann is None or int(ann["image_id"]) != image_id:
            pairs.append((record, image_id, None, f"annotation {ann_id} is not one of image {image_id}'s"))
        else:
            pairs.append((record, image_id, ann, ""))
    return pairs


def read_coco_pairs(src: str, coco_root: str, split: str = "val2017", resolution: int = 512) -> Imported:
    coco = CocoSplit(coco_root, split)
    config = {"format": "coco-pairs", "list": os.path.abspath(src), "coco": os.path.abspath(coco_root),
              "split": split, "resolution": resolution, "mask": "the annotation's segmentation"}
    return _coco_import(coco, coco_pairs_from_ids(coco, _read_rows(src, ("image_id", "annotation_id"))), False,
                        resolution, src, config)


def paper_coco_pairs(coco: CocoSplit, per_image: int = 2, seed: int = 0, min_area: float = 0.01) -> list[tuple[int, int]]:
    """The paper protocol's list: per image, `per_image` non-crowd annotations drawn without replacement
    (numpy's default_rng([seed, image_id]), from those covering at least `min_area` of the image, by id)."""
    out = []
    for image_id in coco.image_ids:
        im = coco.images[image_id]
        floor = min_area * im["width"] * im["height"]
        cands = sorted(int(a["id"]) for a in coco.polygon_annotations[image_id]
                       if not a.get("iscrowd") and float(a.get("area", 0)) >= floor)
        if not cands:
            continue
        rng = np.random.default_rng([seed, image_id])
        picked = rng.choice(len(cands), size=min(per_image, len(cands)), replace=False)
        out += [(image_id, cands[i]) for i in sorted(picked)]
    return out


def read_coco_paper(coco_root: str, split: str = "val2017", resolution: int = 512, per_image: int = 2,
                    seed: int = 0, min_area: float = 0.01) -> Imported:
    coco = CocoSplit(coco_root, split)
    rows = paper_coco_pairs(coco, per_image, seed, min_area)
    config = {"format": "coco-paper", "coco": os.path.abspath(coco_root), "split": split, "resolution": resolution,
              "per_image": per_image, "seed": seed, "min_area": min_area, "mask": "the annotation's segmentation",
              "pairs": [list(r) for r in rows]}
    return _coco_import(coco, coco_pairs_from_ids(coco, rows), False, resolution, None, config)
