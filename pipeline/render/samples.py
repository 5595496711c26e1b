"""One inpainting sample: render it from a decoded image and an instance row, encode, decode."""

from __future__ import annotations

import io
import json
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

from smartbrush.config import RenderConfig
from smartbrush.pipeline.render.crop import check_size_at_resolution, crop_image, crop_mask, crop_window
from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.render.ladder import levels_from_map, map_from_levels, render_level_map
from smartbrush.pipeline.render.masks import mask_box, rle_to_mask
from smartbrush.schemas import shard_sample
from smartbrush.schemas.mask_schedule import MaskSchedule


def encode_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_mask_png(mask: np.ndarray) -> bytes:
    """1-bit PNG of one bool mask (the v1 sample format's mask members; also used for fixtures)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    """A bool mask from a PNG of any mode (nonzero = inside)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) > 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_level_map(level_map: np.ndarray) -> bytes:
    """The v2 `levels.png`: an 8-bit grayscale PNG of a uint8 level map.

    Written directly (no imaging library): every row uses PNG's "Up" filter (difference with the row
    above, so the constant rows outside the box and the flat inside become zeros) and zlib's RLE
    strategy, which is about as small as libpng's best and several times faster. Any PNG reader
    decodes it; the same map always gives the same bytes."""
    level_map = np.asarray(level_map)
    if level_map.ndim != 2 or level_map.dtype != np.uint8 or not level_map.size:
        raise ValueError(f"a level map is a non-empty 2-D uint8 array, got {level_map.dtype} {level_map.shape}")
    h, w = level_map.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 2  # filter type Up; the first row's "above" is zero, so it holds its own values
    rows[0, 1:] = level_map[0]
    np.subtract(level_map[1:], level_map[:-1], out=rows[1:, 1:])  # modulo 256, as PNG defines it
    z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = z.compress(rows.data) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def decode_level_map(data: bytes) -> np.ndarray:
    """The uint8 level map of a v2 `levels.png`; ValueError when it is not an 8-bit grayscale PNG."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise ValueError("not a decodable PNG")
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"a level map is an 8-bit grayscale PNG, this one decodes to {arr.dtype} {arr.shape}")
    return arr


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RecordError("crop_failed", "JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_masks(levels: list[np.ndarray]) -> dict[str, bytes]:
    """The v2 mask member of a ladder given as nested bool masks (index = level)."""
    return {shard_sample.LEVELS_EXT: encode_level_map(map_from_levels(levels))}


def encode_masks_v1(levels: list[np.ndarray]) -> dict[str, bytes]:
    """The v1 mask members (one 1-bit PNG per level): for tests and fixtures of v1 input."""
    return {shard_sample.mask_ext(s): encode_mask_png(m) for s, m in enumerate(levels)}


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
    level_map = render_level_map(exact, schedule)
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
    }
    sample = {shard_sample.IMAGE_EXT: encode_jpeg(crop, render.jpeg_quality), shard_sample.META_EXT: encode_json(meta)}
    sample[shard_sample.LEVELS_EXT] = encode_level_map(level_map)
    return sample


def sample_meta(sample: dict) -> dict:
    """The `json` of an inpainting sample of a version this smartbrush reads (v1 or v2)."""
    raw = sample[shard_sample.META_EXT]
    meta = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    if (not isinstance(meta, dict) or meta.get("schema") != shard_sample.NAME
            or meta.get("schema_version") not in shard_sample.READABLE_VERSIONS):
        versions = ", ".join(f"v{v}" for v in shard_sample.READABLE_VERSIONS)
        raise ValueError(f"sample {sample.get('__key__')}: not a {shard_sample.NAME} sample of a version this "
                         f"smartbrush reads ({versions})")
    return meta


def _v1_mask_keys(meta: dict, key) -> list[str]:
    keys = meta.get("mask_keys")
    if not isinstance(keys, list) or len(keys) < 2 or keys != shard_sample.mask_exts(len(keys)):
        raise ValueError(f"sample {key}: v1 mask_keys {keys!r} is not [mask_s0.png, ..., mask_sS.png]")
    return keys


def sample_num_levels(sample: dict, meta: dict | None = None) -> int:
    """S + 1, the number of precision levels of a raw sample (v1 or v2)."""
    meta = sample_meta(sample) if meta is None else meta
    if meta["schema_version"] == 1:
        return len(_v1_mask_keys(meta, sample.get("__key__")))
    levels = (meta.get("mask_schedule") or {}).get("levels")
    if not isinstance(levels, list) or not 2 <= len(levels) <= shard_sample.MAX_LEVELS:
        raise ValueError(f"sample {sample.get('__key__')}: mask_schedule.levels must list 2..{shard_sample.MAX_LEVELS} "
                         "levels")
    return len(levels)


def _member(sample: dict, ext: str) -> bytes:
    data = sample.get(ext)
    if data is None:
        raise ValueError(f"sample {sample.get('__key__')}: no {ext} member")
    return data


def check_level_map(level_map: np.ndarray, num_levels: int, where: str = "level map") -> np.ndarray:
    """`level_map` itself when every value is a level (< num_levels) or OUTSIDE; else ValueError."""
    if np.count_nonzero(level_map >= num_levels) != np.count_nonzero(level_map == shard_sample.OUTSIDE):
        bad = np.unique(level_map[(level_map >= num_levels) & (level_map != shard_sample.OUTSIDE)])
        raise ValueError(f"{where}: values {bad[:5].tolist()} are neither a level 0..{num_levels - 1} nor "
                         f"{shard_sample.OUTSIDE}")
    return level_map


def sample_level_map(sample: dict) -> np.ndarray:
    """The uint8 level map of a raw sample (mask_s = map <= s); v1 samples are converted."""
    meta = sample_meta(sample)
    n = sample_num_levels(sample, meta)
    if meta["schema_version"] == 1:
        return map_from_levels([decode_mask_png(_member(sample, k)) for k in _v1_mask_keys(meta, sample.get("__key__"))])
    level_map = decode_level_map(_member(sample, shard_sample.LEVELS_EXT))
    return check_level_map(level_map, n, f"sample {sample.get('__key__')}: {shard_sample.LEVELS_EXT}")


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
