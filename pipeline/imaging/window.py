"""Square windows around a box and their pixels: the one placer and the one cut for the training
crop (render/crop.py) and the captioner's crop (caption/crops.py)."""

from __future__ import annotations

import math

import numpy as np

from smartbrush.pipeline.imaging.masks import Box


def place(lo: int, hi: int, side: int, dim: int) -> int:
    """Start of a window of `side` along one axis that contains [lo, hi) and stays inside [0, dim)
    when it can; when the window is longer than the axis it is centred on the image. Centred on
    [lo, hi) otherwise, moved inside the image at its borders."""
    start = math.floor((lo + hi) / 2 - side / 2) if side <= dim else math.floor((dim - side) / 2)
    if side <= dim:
        start = min(max(start, 0), dim - side)
    return min(max(start, hi - side), lo)


def square_window(box: Box, side: int, image_size: tuple[int, int]) -> Box:
    """The square window of `side` placed around `box` on both axes (see place)."""
    x0, y0, x1, y1 = box
    width, height = image_size
    wx0, wy0 = place(x0, x1, side, width), place(y0, y1, side, height)
    return wx0, wy0, wx0 + side, wy0 + side


def cut_window(array: np.ndarray, window: Box, fill=0) -> np.ndarray:
    """The window's pixels (a view when it lies inside the array); where it extends past the array,
    `fill` (a value or an RGB triple)."""
    x0, y0, x1, y1 = window
    h, w = array.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return array[y0:y1, x0:x1]
    out = np.empty((y1 - y0, x1 - x0) + array.shape[2:], dtype=array.dtype)
    out[...] = fill
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out
