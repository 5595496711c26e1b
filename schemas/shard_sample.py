"""Inpainting shard sample: the WebDataset members of one object instance.

A sample is self-describing: `json` carries the label, captions, boxes, crop window, source ids and
the full mask schedule, so a training loader needs no other file. docs/shard-format.md describes
both versions with examples.

Version 2 (written by this smartbrush), members of key `instance_id`:
  jpg         the R x R training crop (JPEG)
  levels.png  the whole mask ladder in one 8-bit grayscale R x R PNG, the "level map": a pixel's
              value is the smallest precision level s whose mask contains it (0 = inside the exact
              mask ... S = inside the box only), 255 outside the box (outside every level). The mask
              at level s is `map <= s`; the ladder nests by construction and level S is the box.
              S + 1 = len(json["mask_schedule"]["levels"]) <= MAX_LEVELS.
  json        META_KEYS below (no `mask_keys`: there is one mask member whatever S).

Version 1 (read, not written; `smartbrush remask` converts it): one 1-bit PNG per level,
`mask_s0.png` ... `mask_sS.png`, and json["mask_keys"] listing them (META_KEYS_V1).

Every reader in smartbrush goes through the functions below (sample_meta, sample_level_map,
sample_masks, sample_mask, sample_num_levels, sample_task), which read both versions and
img2dataset's text-to-image samples; the level-map PNG codec is schemas/level_map.py.
"""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
from PIL import Image

from smartbrush.schemas.level_map import (MAX_LEVELS, OUTSIDE, check_level_map, decode_level_map_rows,  # noqa: F401
                                          levels_from_map, map_from_levels)

NAME = "smartbrush.inpainting_sample"
VERSION = 2
READABLE_VERSIONS = (1, 2)

IMAGE_EXT = "jpg"
META_EXT = "json"
LEVELS_EXT = "levels.png"  # v2: the level map


def mask_ext(level: int) -> str:
    """v1 only: member extension of the mask at precision level `level` (0 = exact ... S = box)."""
    return f"mask_s{level}.png"


def mask_exts(num_levels: int) -> list[str]:
    """v1 only: the `mask_keys` of a v1 sample with `num_levels` = S + 1 levels."""
    return [mask_ext(s) for s in range(num_levels)]


# Keys of the `json` member (v2). Coordinates are [x0, y0, x1, y1] with x1/y1 exclusive.
META_KEYS = (
    "schema",  # NAME
    "schema_version",  # VERSION
    "task",  # "inpainting"
    "instance_id",
    "source",
    "split",
    "image_id",
    "annotation_id",
    "image_path",
    "image_size",  # [width, height] of the source image
    "image_sha256",  # sha256 of the source image file's bytes; null in a sample remask converted from v1
    "category_id",
    "label",
    "captions",  # [{text, model, revision, settings}]
    "area",  # exact-mask pixels at source resolution
    "box_source_xyxy",
    "crop_window_source_xyxy",  # may extend past the image; padding is black
    "crop_policy",  # how the crop window was chosen: "scene" | "object"; null in a sample converted from v1
    "box_crop_xyxy",  # tight box of the s = 0 mask at crop resolution (= the box level, map != 255)
    "resolution",  # R: the jpg and levels.png are R x R
    "mask_schedule",  # {"id", "hash", "levels": [...]}: S + 1 = len(levels); level s of levels.png
)

# Keys of a v1 sample's `json`: v2's without image_sha256 and crop_policy, plus mask_keys.
META_KEYS_V1 = tuple(k for k in META_KEYS if k not in ("image_sha256", "crop_policy")) + (
    "mask_keys",  # member extensions ["mask_s0.png", ..., "mask_sS.png"], index = precision level s
)

# Tasks of a training sample: inpainting samples say so in their json; text-to-image samples are
# img2dataset's jpg/txt/json (no "task", or "task": "text_to_image").
TASK_INPAINTING = "inpainting"
TASK_TEXT_TO_IMAGE = "text_to_image"
TASKS = (TASK_INPAINTING, TASK_TEXT_TO_IMAGE)


def encode_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_json(raw) -> dict:
    """A sample's `json` member as a dict ({} when absent); bytes, text or an already parsed dict."""
    if raw is None:
        return {}
    return json.loads(raw) if isinstance(raw, (bytes, bytearray, str)) else dict(raw)


def sample_task(sample: dict) -> str:
    task = parse_json(sample.get(META_EXT)).get("task") or TASK_TEXT_TO_IMAGE
    if task not in TASKS:
        raise ValueError(f"sample {sample.get('__key__')}: unknown task {task!r}")
    return task


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB pixels of the `jpg` member (OpenCV, decoded straight to RGB). Every reader of shard
    images uses this one decoder, so training, evaluation and previews see the same pixels."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise ValueError("not a decodable JPEG")
    return rgb


def decode_mask_png(data: bytes) -> np.ndarray:
    """A bool mask from a PNG of any mode (nonzero = inside): a v1 sample's `mask_sK.png`."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) > 0


def sample_meta(sample: dict) -> dict:
    """The `json` of an inpainting sample of a version this smartbrush reads (v1 or v2)."""
    raw = sample[META_EXT]
    meta = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    if (not isinstance(meta, dict) or meta.get("schema") != NAME
            or meta.get("schema_version") not in READABLE_VERSIONS):
        versions = ", ".join(f"v{v}" for v in READABLE_VERSIONS)
        raise ValueError(f"sample {sample.get('__key__')}: not a {NAME} sample of a version this "
                         f"smartbrush reads ({versions})")
    return meta


def _v1_mask_keys(meta: dict, key) -> list[str]:
    keys = meta.get("mask_keys")
    if not isinstance(keys, list) or len(keys) < 2 or keys != mask_exts(len(keys)):
        raise ValueError(f"sample {key}: v1 mask_keys {keys!r} is not [mask_s0.png, ..., mask_sS.png]")
    return keys


def sample_num_levels(sample: dict, meta: dict | None = None) -> int:
    """S + 1, the number of precision levels of a raw sample (v1 or v2)."""
    meta = sample_meta(sample) if meta is None else meta
    if meta["schema_version"] == 1:
        return len(_v1_mask_keys(meta, sample.get("__key__")))
    levels = (meta.get("mask_schedule") or {}).get("levels")
    if not isinstance(levels, list) or not 2 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"sample {sample.get('__key__')}: mask_schedule.levels must list 2..{MAX_LEVELS} "
                         "levels")
    return len(levels)


def _member(sample: dict, ext: str) -> bytes:
    data = sample.get(ext)
    if data is None:
        raise ValueError(f"sample {sample.get('__key__')}: no {ext} member")
    return data


def sample_level_map(sample: dict, meta: dict | None = None) -> np.ndarray:
    """The uint8 level map of a raw sample (mask_s = map <= s); v1 samples are converted. `meta` may
    give its already parsed sample_meta."""
    meta = sample_meta(sample) if meta is None else meta
    n = sample_num_levels(sample, meta)
    if meta["schema_version"] == 1:
        keys = _v1_mask_keys(meta, sample.get("__key__"))
        return map_from_levels([decode_mask_png(_member(sample, k)) for k in keys])
    level_map, rows = decode_level_map_rows(_member(sample, LEVELS_EXT))
    checked = level_map[rows[0]:rows[1]] if rows is not None else level_map  # other rows: OUTSIDE by decoding
    check_level_map(checked, n, f"sample {sample.get('__key__')}: {LEVELS_EXT}")
    return level_map


def sample_masks(sample: dict) -> list[np.ndarray]:
    """The mask ladder of a raw (undecoded) sample, index = precision level (v1 or v2)."""
    meta = sample_meta(sample)
    if meta["schema_version"] == 1:
        return [decode_mask_png(_member(sample, k)) for k in _v1_mask_keys(meta, sample.get("__key__"))]
    return levels_from_map(sample_level_map(sample), sample_num_levels(sample, meta))


def sample_mask(sample: dict, level: int) -> np.ndarray:
    """The mask at precision level `level` of a raw (undecoded) sample (v1 or v2)."""
    meta = sample_meta(sample)
    n = sample_num_levels(sample, meta)
    if not 0 <= level < n:
        raise ValueError(f"sample {sample.get('__key__')}: level {level} outside 0..{n - 1}")
    if meta["schema_version"] == 1:
        return decode_mask_png(_member(sample, _v1_mask_keys(meta, sample.get("__key__"))[level]))
    return sample_level_map(sample) <= level
