"""The precision ladder: masks s = 0 (exact) ... s = S (box) rendered from the exact mask.

Level s = 0 is the exact mask; each blur level is the exact mask Gaussian-blurred, binarised at the
level's threshold, joined with the level below (so the ladder always nests) and clipped to the box;
level S is the box. Blurs run on the box region only (outside it the exact mask is zero, so the
result inside the box is the same as a whole-image blur with zero borders), and wide blurs run at a
reduced resolution: the blurred field is smooth, so resampling it costs almost nothing in accuracy
(tests bound the difference against full resolution).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.render.masks import mask_box
from smartbrush.schemas.mask_schedule import Level, MaskSchedule

# Blur at 1/f resolution with f = floor(sigma / MIN_REDUCED_SIGMA) once sigma exceeds this.
MIN_REDUCED_SIGMA = 4.0


def blur_parameters(level: Level, box_side: int) -> tuple[float, int]:
    """(sigma, odd kernel size) in crop pixels for a blur level and the box's longer side."""
    scale = float(box_side) if level.units == "relative" else 1.0
    sigma = max(level.sigma * scale, 1e-3)
    kernel = level.kernel * scale
    k = int(round(kernel)) if kernel > 0 else 2 * math.ceil(3 * sigma) + 1
    return sigma, max(3, k | 1)


def _gaussian(field: np.ndarray, sigma: float, kernel: int) -> np.ndarray:
    return cv2.GaussianBlur(field, (kernel, kernel), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)


def blur_region(region: np.ndarray, sigma: float, kernel: int, reduce: bool = True) -> np.ndarray:
    """Gaussian blur of a float32 0/1 region with zero outside, optionally at reduced resolution."""
    factor = int(sigma // MIN_REDUCED_SIGMA) if reduce else 1
    if factor < 2:
        return _gaussian(region, sigma, kernel)
    h, w = region.shape
    # Pad so the region divides evenly, plus a kernel margin so the blur can spread past the
    # region's edge before the result is cut back (padding is zero, as the mask is outside its box).
    margin = (kernel // 2 // factor + 1) * factor
    ph = math.ceil(h / factor) * factor + 2 * margin
    pw = math.ceil(w / factor) * factor + 2 * margin
    padded = np.zeros((ph, pw), np.float32)
    padded[margin:margin + h, margin:margin + w] = region
    small = cv2.resize(padded, (pw // factor, ph // factor), interpolation=cv2.INTER_AREA)
    small_kernel = max(3, int(round(kernel / factor)) | 1)
    small = _gaussian(small, sigma / factor, small_kernel)
    full = cv2.resize(small, (pw, ph), interpolation=cv2.INTER_LINEAR)
    return full[margin:margin + h, margin:margin + w]


def render_ladder(exact: np.ndarray, schedule: MaskSchedule, reduce: bool = True) -> list[np.ndarray]:
    """All levels of `schedule` as bool arrays the shape of `exact`; level 0 is `exact` itself."""
    exact = exact.astype(bool)
    x0, y0, x1, y1 = mask_box(exact)
    if x1 == x0:
        raise RecordError("empty_mask", "the exact mask is empty at crop resolution")
    box_side = max(x1 - x0, y1 - y0)
    region = exact[y0:y1, x0:x1]
    region_f = region.astype(np.float32)
    levels = [exact]
    below = region
    for level in schedule.levels[1:-1]:
        sigma, kernel = blur_parameters(level, box_side)
        grown = (blur_region(region_f, sigma, kernel, reduce) > level.threshold) | below
        full = np.zeros_like(exact)
        full[y0:y1, x0:x1] = grown
        levels.append(full)
        below = grown
    box = np.zeros_like(exact)
    box[y0:y1, x0:x1] = True
    levels.append(box)
    return levels
