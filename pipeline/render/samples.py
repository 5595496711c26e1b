"""One inpainting sample: render it from a decoded image and an instance row, encode, decode."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
from PIL import Image

from smartbrush.config import RenderConfig
from smartbrush.pipeline.render.crop import choose_crop_window, crop_image, crop_mask
from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.render.ladder import render_ladder
from smartbrush.pipeline.render.masks import mask_box, rle_to_mask
from smartbrush.schemas import shard_sample
from smartbrush.schemas.mask_schedule import MaskSchedule


def encode_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_mask_png(mask: np.ndarray) -> bytes:
    """1-bit PNG: the smallest and, per ARCHITECTURE.md's measurements, the fastest to encode."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) > 0


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RecordError("crop_failed", "JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_masks(levels: list[np.ndarray]) -> dict[str, bytes]:
    return {shard_sample.mask_ext(s): encode_mask_png(m) for s, m in enumerate(levels)}


def render_sample(image: np.ndarray, row: dict, schedule: MaskSchedule, render: RenderConfig) -> dict[str, bytes]:
    """The WebDataset members of one instance (without `__key__`), from the decoded source image."""
    height, width = image.shape[:2]
    rle = {"size": list(row["mask_rle_size"]), "counts": row["mask_rle_counts"]}
    if tuple(rle["size"]) != (height, width):
        raise RecordError("rle_size_mismatch", f"mask {rle['size']} vs decoded image {height}x{width}")
    box = tuple(int(v) for v in row["box_xyxy"])
    window = choose_crop_window(box, (width, height), render.context, render.min_crop_fraction)
    R = render.resolution
    crop = crop_image(image, window, R)
    exact = crop_mask(rle_to_mask(rle), window, R)
    levels = render_ladder(exact, schedule)
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
        "image_size": [width, height],
        "category_id": row["category_id"],
        "label": row["label"],
        "captions": [dict(c) for c in row.get("captions") or []],
        "area": int(row["area"]),
        "box_source_xyxy": list(box),
        "crop_window_source_xyxy": list(window),
        "box_crop_xyxy": list(mask_box(exact)),
        "resolution": R,
        "mask_schedule": schedule.to_json(),
        "mask_keys": shard_sample.mask_exts(schedule.num_levels),
    }
    sample = {shard_sample.IMAGE_EXT: encode_jpeg(crop, render.jpeg_quality), shard_sample.META_EXT: encode_json(meta)}
    sample.update(encode_masks(levels))
    return sample


def sample_meta(sample: dict) -> dict:
    raw = sample[shard_sample.META_EXT]
    meta = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    if meta.get("schema") != shard_sample.NAME or meta.get("schema_version") != shard_sample.VERSION:
        raise ValueError(f"sample {sample.get('__key__')}: not a {shard_sample.NAME} v{shard_sample.VERSION} sample")
    return meta


def sample_masks(sample: dict) -> list[np.ndarray]:
    """The mask ladder of a raw (undecoded) sample, index = precision level."""
    return [decode_mask_png(sample[k]) for k in sample_meta(sample)["mask_keys"]]


def sample_mask(sample: dict, level: int) -> np.ndarray:
    """The mask at precision level `level` of a raw (undecoded) sample."""
    keys = sample_meta(sample)["mask_keys"]
    if not 0 <= level < len(keys):
        raise ValueError(f"sample {sample.get('__key__')}: level {level} outside 0..{len(keys) - 1}")
    return decode_mask_png(sample[keys[level]])
