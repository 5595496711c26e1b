"""One inpainting sample rendered from a decoded source image and an instance row (the v2 members
of schemas/shard_sample.py)."""

from __future__ import annotations

import cv2
import numpy as np

from smartbrush.config import RenderConfig
from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.render.crop import check_size_at_resolution, crop_image, crop_mask, crop_window
from smartbrush.pipeline.render.ladder import render_region_map
from smartbrush.pipeline.imaging.masks import mask_box, rle_to_mask
from smartbrush.schemas import shard_sample
from smartbrush.schemas.level_map import encode_level_map_box
from smartbrush.schemas.mask_schedule import MaskSchedule
from smartbrush.schemas.shard_sample import encode_json


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RecordError("crop_failed", "JPEG encoding failed")
    return buf.tobytes()


def render_sample(image: np.ndarray, row: dict, schedule: MaskSchedule, render: RenderConfig) -> dict[str, bytes]:
    """The WebDataset members of one instance (without `__key__`), from the decoded source image."""
    height, width = image.shape[:2]
    rle = {"size": list(row["mask_rle_size"]), "counts": row["mask_rle_counts"]}
    if tuple(rle["size"]) != (height, width):
        raise RecordError("rle_size_mismatch", f"mask {rle['size']} vs decoded image {height}x{width}")
    box = tuple(int(v) for v in row["box_xyxy"])
    window = crop_window(box, (width, height), render)
    check_size_at_resolution(box, window, render)  # RecordError, kind filtered
    R = render.resolution
    crop = crop_image(image, window, R)
    exact = crop_mask(rle_to_mask(rle), window, R)
    box_crop = mask_box(exact)
    if box_crop[2] == box_crop[0]:
        raise RecordError("empty_mask", "the exact mask is empty at crop resolution")
    x0, y0, x1, y1 = box_crop
    region_map = render_region_map(exact[y0:y1, x0:x1], schedule)
    meta = {
        "schema": shard_sample.NAME,
        "schema_version": shard_sample.VERSION,
        "task": "inpainting",
        "instance_id": row["instance_id"],
        "source": row["source"],
        "split": row["split"],
        "image_id": row["image_id"],
        "annotation_id": row["annotation_id"],
        "image_path": row["image_path"],
        "image_sha256": row.get("image_sha256"),  # of the source file; null when rendered without it
        "image_size": [width, height],
        "category_id": row["category_id"],
        "label": row["label"],
        "captions": [dict(c) for c in row.get("captions") or []],
        "area": int(row["area"]),
        "box_source_xyxy": list(box),
        "crop_policy": render.crop_policy,
        "crop_window_source_xyxy": list(window),
        "box_crop_xyxy": list(box_crop),
        "resolution": R,
        "mask_schedule": schedule.to_json(),
    }
    sample = {shard_sample.IMAGE_EXT: encode_jpeg(crop, render.jpeg_quality), shard_sample.META_EXT: encode_json(meta)}
    sample[shard_sample.LEVELS_EXT] = encode_level_map_box(region_map, box_crop, R, R)
    return sample
