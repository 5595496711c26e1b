"""The training crop: a square window around the object, then a resize to R x R."""

from __future__ import annotations

import math

import cv2
import numpy as np

from smartbrush.pipeline.render.masks import Box


def _place(lo: int, hi: int, side: int, dim: int) -> int:
    """Start of a window of `side` along one axis that contains [lo, hi) and stays inside [0, dim)
    when it can; when the window is longer than the axis it is centred on the image."""
    start = math.floor((lo + hi) / 2 - side / 2) if side <= dim else math.floor((dim - side) / 2)
    if side <= dim:
        start = min(max(start, 0), dim - side)
    return min(max(start, hi - side), lo)


def choose_crop_window(box: Box, image_size: tuple[int, int], context: float = 1.5,
                       min_crop_fraction: float = 0.25) -> Box:
    """Square crop window in source pixels that contains `box`.

    Side = max(context x longer box side, min_crop_fraction x shorter image side), capped at the
    shorter image side, but never smaller than the box. The window extends past the image (and is
    padded black) only when the object is longer than the image's shorter side.
    """
    x0, y0, x1, y1 = box
    width, height = image_size
    longer = max(x1 - x0, y1 - y0, 1)
    side = math.ceil(max(context * longer, min_crop_fraction * min(width, height)))
    side = max(min(side, min(width, height)), longer)
    wx0 = _place(x0, x1, side, width)
    wy0 = _place(y0, y1, side, height)
    return wx0, wy0, wx0 + side, wy0 + side


def extract_window(array: np.ndarray, window: Box) -> np.ndarray:
    """The window's pixels, zero-padded where it extends past the array."""
    x0, y0, x1, y1 = window
    h, w = array.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return array[y0:y1, x0:x1]
    out = np.zeros((y1 - y0, x1 - x0) + array.shape[2:], dtype=array.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def _interpolation(side: int, resolution: int) -> int:
    return cv2.INTER_AREA if side >= resolution else cv2.INTER_LINEAR


def crop_image(image: np.ndarray, window: Box, resolution: int) -> np.ndarray:
    patch = extract_window(image, window)
    side = window[2] - window[0]
    if side == resolution:
        return np.ascontiguousarray(patch)
    return cv2.resize(patch, (resolution, resolution), interpolation=_interpolation(side, resolution))


def crop_mask(mask: np.ndarray, window: Box, resolution: int) -> np.ndarray:
    """Crop and resize a 0/1 mask the way the image is resized, binarised at one half."""
    patch = extract_window(mask.astype(np.uint8) * 255, window)
    side = window[2] - window[0]
    if side != resolution:
        patch = cv2.resize(patch, (resolution, resolution), interpolation=_interpolation(side, resolution))
    return patch >= 128
