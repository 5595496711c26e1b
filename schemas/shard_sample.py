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

Readers inside smartbrush go through smartbrush.pipeline.render.samples (sample_meta, sample_masks,
sample_mask, sample_num_levels), which read both versions.
"""

from __future__ import annotations

NAME = "smartbrush.inpainting_sample"
VERSION = 2
READABLE_VERSIONS = (1, 2)

IMAGE_EXT = "jpg"
META_EXT = "json"
LEVELS_EXT = "levels.png"  # v2: the level map
OUTSIDE = 255  # level-map value of pixels outside the box (outside every level)
MAX_LEVELS = 255  # S + 1 <= 255: values 0..254 are levels, 255 is OUTSIDE


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
