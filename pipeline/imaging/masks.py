"""Instance masks: COCO segmentations and OpenImages mask PNGs to compressed RLE, and back."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from smartbrush.pipeline.errors import RecordError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with x1, y1 exclusive


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _check_polygons(polygons: list, height: int, width: int) -> list[list[float]]:
    if not polygons:
        raise RecordError("invalid_polygon", "empty polygon list")
    total_area = 0.0
    for i, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple)) or len(poly) % 2:
            raise RecordError("invalid_polygon", f"part {i}: needs an even number of coordinates")
        if len(poly) < 6:
            raise RecordError("invalid_polygon", f"part {i}: {len(poly) // 2} points, at least 3 needed")
        try:
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError) as e:
            raise RecordError("invalid_polygon", f"part {i}: non-numeric coordinates ({e})") from None
        if not np.all(np.isfinite(xy)):
            raise RecordError("invalid_polygon", f"part {i}: non-finite coordinates")
        total_area += _polygon_area(xy)
    if total_area <= 0.0:
        raise RecordError("invalid_polygon", "zero area")
    return [list(map(float, p)) for p in polygons]


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """A COCO `segmentation` (polygons, uncompressed or compressed RLE) to one compressed RLE.

    The RLE's counts are a str, so the result is JSON- and Parquet-friendly.
    """
    if isinstance(segmentation, list):
        polys = _check_polygons(segmentation, height, width)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2) or counts is None:
            raise RecordError("invalid_rle", "RLE needs 'size' [h, w] and 'counts'")
        h, w = int(size[0]), int(size[1])
        if (h, w) != (height, width):
            raise RecordError("rle_size_mismatch", f"RLE size {h}x{w}, image {height}x{width}")
        if isinstance(counts, list):
            if any((not isinstance(c, (int, float))) or c < 0 for c in counts) or sum(counts) != h * w:
                raise RecordError("invalid_rle", f"uncompressed counts must be >= 0 and sum to {h * w}")
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
            try:
                decoded = mask_utils.decode(rle)
            except Exception as e:  # pycocotools raises plain exceptions on garbage
                raise RecordError("invalid_rle", f"undecodable compressed counts ({e})") from None
            rle = mask_utils.encode(np.asfortranarray(decoded))
        else:
            raise RecordError("invalid_rle", f"counts of type {type(counts).__name__}")
    else:
        raise RecordError("invalid_annotation", f"segmentation of type {type(segmentation).__name__}")
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_to_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Compressed RLE (counts str or bytes) to an HxW uint8 0/1 mask."""
    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts})


def rle_area_and_box(rle: dict) -> tuple[int, Box]:
    """Pixel count and tight integer box of a compressed RLE; box (0, 0, 0, 0) when empty."""
    r = {"size": list(rle["size"]), "counts": rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]}
    area = int(mask_utils.area(r))
    if area == 0:
        return 0, (0, 0, 0, 0)
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(r))
    return area, (x, y, x + w, y + h)


def mask_box(mask: np.ndarray) -> Box:
    """Tight box of a 2-D mask; (0, 0, 0, 0) when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0, 0, 0, 0
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def openimages_mask_to_rle(png_bytes: bytes, width: int, height: int) -> dict:
    """An OpenImages instance mask PNG (often at another resolution) resized to the image, as RLE."""
    try:
        with Image.open(io.BytesIO(png_bytes)) as im:
            im.load()
            arr = np.asarray(im.convert("L")) > 0
    except Exception as e:
        raise RecordError("mask_unreadable", f"{type(e).__name__}: {e}") from None
    mh, mw = arr.shape
    if (mw, mh) != (width, height):
        # Nearest neighbour keeps the mask binary; OpenImages masks share the image's aspect ratio.
        if not math.isclose(mw / mh, width / height, rel_tol=0.03):
            raise RecordError("mask_size_mismatch",
                              f"mask {mw}x{mh} has another aspect ratio than image {width}x{height}")
        arr = cv2.resize(arr.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask_to_rle(arr)
