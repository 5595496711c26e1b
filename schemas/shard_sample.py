"""Inpainting shard sample: the WebDataset members of one object instance.

A sample is self-describing: `json` carries the label, captions, boxes, crop window, source ids and
the full mask schedule, so a training loader needs no other file.
"""

from __future__ import annotations

NAME = "smartbrush.inpainting_sample"
VERSION = 1

IMAGE_EXT = "jpg"
META_EXT = "json"


def mask_ext(level: int) -> str:
    """Member extension of the mask at precision level `level` (0 = exact ... S = box)."""
    return f"mask_s{level}.png"


def mask_exts(num_levels: int) -> list[str]:
    return [mask_ext(s) for s in range(num_levels)]


# Keys of the `json` member. Coordinates are [x0, y0, x1, y1] with x1/y1 exclusive.
META_KEYS = (
    "schema",
    "schema_version",
    "task",  # "inpainting"
    "instance_id",
    "source",
    "split",
    "image_id",
    "annotation_id",
    "image_path",
    "image_size",  # [width, height] of the source image
    "category_id",
    "label",
    "captions",  # [{text, model, revision, settings}]
    "area",  # exact-mask pixels at source resolution
    "box_source_xyxy",
    "crop_window_source_xyxy",  # may extend past the image; padding is black
    "box_crop_xyxy",  # tight box of the s = 0 mask at crop resolution
    "resolution",
    "mask_schedule",  # {"id", "hash", "levels": [...]}
    "mask_keys",  # member extensions, index = precision level s
)
