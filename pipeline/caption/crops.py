"""The crop a captioner sees: the object's box plus a margin, squared, never below a minimum side,
moved inside the image where it fits and padded where it cannot, optionally with the background
outside the mask greyed out, then resized to the captioner's input size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from smartbrush.config import RenderConfig
from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.imaging.image_rows import per_image
from smartbrush.pipeline.imaging.masks import Box
from smartbrush.pipeline.imaging.window import cut_window, square_window

BICUBIC = 3  # PIL's (and BlipImageProcessor's) resample code


@dataclass(frozen=True)
class CropPolicy:
    margin: float = 0.1  # added on each side, as a fraction of the box's longer side
    min_side: int = 64  # source pixels: tiny objects get some context (capped at the image)
    grey_background: bool = False  # fill pixels outside the object's mask

    def to_dict(self) -> dict:
        return {"margin": self.margin, "min_side": self.min_side, "grey_background": self.grey_background}


def clip_box(box, image_size: tuple[int, int]) -> Box:
    """The box rounded outwards to whole pixels and clipped to the image; RecordError("crop_failed")
    when nothing of it is left inside the image."""
    width, height = image_size
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise RecordError("crop_failed", f"box {box!r} is not four numbers") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise RecordError("crop_failed", f"box {box!r} is not finite")
    cx0, cy0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
    cx1, cy1 = min(math.ceil(x1), width), min(math.ceil(y1), height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise RecordError("crop_failed", f"box {list(box)} has no pixels inside the {width}x{height} image")
    return cx0, cy0, cx1, cy1


def caption_window(box, image_size: tuple[int, int], policy: CropPolicy) -> Box:
    """Square window in source pixels around `box`: side = longer box side x (1 + 2 margin), at least
    min_side, at most the image's shorter side, but never smaller than the (clipped) box itself.
    It extends past the image only when the object is longer than the image's shorter side; it is
    placed like the training crop (imaging/window.py's place)."""
    width, height = image_size
    clipped = clip_box(box, image_size)
    x0, y0, x1, y1 = clipped
    longer = max(x1 - x0, y1 - y0)
    side = max(math.ceil(longer * (1 + 2 * policy.margin)), policy.min_side)
    side = max(min(side, width, height), longer)
    return square_window(clipped, side, image_size)


def caption_crop(image: np.ndarray, box, policy: CropPolicy, out_size: tuple[int, int],
                 mask: np.ndarray | None = None, fill=(128, 128, 128), resample: int = BICUBIC) -> np.ndarray:
    """The captioner's input for one object: an out_size (height, width) RGB uint8 array.

    `image` is the decoded HxWx3 source image; `mask` (HxW, nonzero = object) is needed only when
    the policy greys out the background, which is then set to `fill` like the padding."""
    height, width = image.shape[:2]
    window = caption_window(box, (width, height), policy)
    fill = np.asarray(fill, dtype=np.uint8)
    crop = cut_window(image, window, fill)
    if policy.grey_background:
        if mask is None or mask.shape[:2] != (height, width):
            raise RecordError("crop_failed", "grey_background needs the object's mask at image size")
        inside = cut_window(mask, window, 0).astype(bool)
        crop = np.where(inside[:, :, None], crop, fill)
    out_h, out_w = out_size
    if crop.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((out_w, out_h), resample=resample))


def image_crops(rows: list[dict], make_crop, render: RenderConfig | None = None,
                stage: str = "caption") -> tuple[list[tuple[str, np.ndarray]], list[dict], list[dict]]:
    """All instances of one source image: decode it once, then `make_crop(image, row)` for each.

    Returns (instance_id, crop) pairs, the rows that got a crop (in instance_id order) and
    rejection rows for the others (every row when the image itself cannot be loaded)."""
    done, rejected = per_image(rows, lambda image, row: make_crop(image.pixels, row), render or RenderConfig(), stage)
    return [(row["instance_id"], crop) for row, crop in done], [row for row, _ in done], rejected
