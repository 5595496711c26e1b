"""The training crop: a square window holding the object (policy `scene` or `object`, see
docs/crop-policy.md), then a resize to R x R."""

from __future__ import annotations

import math

import cv2
import numpy as np

from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.imaging.masks import Box
from smartbrush.pipeline.imaging.window import cut_window, square_window


def choose_crop_window(box: Box, image_size: tuple[int, int], context: float = 1.5,
                       min_crop_fraction: float = 0.25) -> Box:
    """The `object` policy's square crop window in source pixels that contains `box`.

    Side = max(context x longer box side, min_crop_fraction x shorter image side), capped at the
    shorter image side, but never smaller than the box. The window extends past the image (and is
    padded black) only when the object is longer than the image's shorter side.
    """
    x0, y0, x1, y1 = box
    width, height = image_size
    longer = max(x1 - x0, y1 - y0, 1)
    side = math.ceil(max(context * longer, min_crop_fraction * min(width, height)))
    side = max(min(side, min(width, height)), longer)
    return square_window(box, side, image_size)


def scene_window(box: Box, image_size: tuple[int, int]) -> Box:
    """The `scene` policy's window: the largest square of the image (side = its shorter side) that
    contains `box`, centred on the box along the image's longer axis and moved inside the image.

    When the box is longer than the image's shorter side no such square exists: the window is then
    the box's longer side, aligned with the box along it and centred on the image across it (padded
    black equally on both sides), as in the object policy."""
    x0, y0, x1, y1 = box
    width, height = image_size
    side = max(min(width, height), x1 - x0, y1 - y0, 1)
    return square_window(box, side, image_size)


def crop_window(box: Box, image_size: tuple[int, int], render) -> Box:
    """The training crop window of `render.crop_policy` (a RenderConfig): `scene` or `object`."""
    if render.crop_policy == "scene":
        return scene_window(box, image_size)
    if render.crop_policy == "object":
        return choose_crop_window(box, image_size, render.context, render.min_crop_fraction)
    raise ValueError(f"unknown crop policy {render.crop_policy!r}: scene or object")


def object_size_at_resolution(box: Box, window: Box, resolution: int) -> float:
    """The longer side of `box` in pixels of the R x R crop of `window`."""
    return max(box[2] - box[0], box[3] - box[1]) * resolution / (window[2] - window[0])


def check_size_at_resolution(box: Box, window: Box, render) -> None:
    """RecordError("too_small_at_resolution", kind="filtered") when the object's box, in the R x R
    crop, has a longer side under render.min_object_size_at_resolution pixels."""
    size = object_size_at_resolution(box, window, render.resolution)
    if size < render.min_object_size_at_resolution:
        raise RecordError("too_small_at_resolution",
                          f"box {list(box)} is {size:.1f} px at R={render.resolution} in window {list(window)}, "
                          f"under render.min_object_size_at_resolution={render.min_object_size_at_resolution}",
                          kind="filtered")


def _interpolation(side: int, resolution: int) -> int:
    return cv2.INTER_AREA if side >= resolution else cv2.INTER_LINEAR


def crop_image(image: np.ndarray, window: Box, resolution: int) -> np.ndarray:
    patch = cut_window(image, window)
    side = window[2] - window[0]
    if side == resolution:
        return np.ascontiguousarray(patch)
    return cv2.resize(patch, (resolution, resolution), interpolation=_interpolation(side, resolution))


def crop_mask(mask: np.ndarray, window: Box, resolution: int) -> np.ndarray:
    """Crop and resize a 0/1 mask the way the image is resized, binarised at one half."""
    patch = cut_window(mask.astype(np.uint8) * 255, window)
    side = window[2] - window[0]
    if side != resolution:
        patch = cv2.resize(patch, (resolution, resolution), interpolation=_interpolation(side, resolution))
    return patch >= 128
