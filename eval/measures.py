"""Per-sample measures on uint8 RGB arrays: background preservation, mask IoU, box crops, pasting, resizing."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def region_mse(output: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float | None:
    """Mean squared error over the pixels of `region` (H x W bool), both images as H x W x 3 uint8 scaled to
    [0, 1]; None when the region is empty."""
    if output.shape != reference.shape:
        raise ValueError(f"output {output.shape} vs reference {reference.shape}")
    region = np.asarray(region, bool)
    if not region.any():
        return None
    d = output.astype(np.float64)[region] / 255.0 - reference.astype(np.float64)[region] / 255.0
    return float(np.mean(d * d))


def psnr(mse: float, cap_db: float = 100.0) -> float:
    """10 log10(1 / mse) for images in [0, 1]; identical regions (mse = 0) give `cap_db`."""
    if mse <= 10.0 ** (-cap_db / 10.0):
        return cap_db
    return 10.0 * math.log10(1.0 / mse)


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks agree (1.0)."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    union = np.logical_or(pred, true).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, true).sum() / union)


def box_crop(image: np.ndarray, box_xyxy, size: int) -> np.ndarray:
    """The box (x1/y1 exclusive, clipped to the image, at least 1 px) resized to size x size (bicubic)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    x0, y0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    x1, y1 = max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1)
    crop = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def to_nchw_uint8(images: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def paste(output: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`output` inside `mask` (H x W bool), `image` outside it."""
    return np.where(np.asarray(mask, bool)[..., None], output, image)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """The image resized to size x size (bicubic); itself when size is 0 or already its size."""
    if not size or image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
