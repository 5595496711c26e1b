"""The training sample interface: a raw WebDataset sample of either kind -> one common dict.

Inpainting samples (schemas/shard_sample.py) carry json "task": "inpainting" and the mask ladder as
a level map. Text-to-image samples are img2dataset's jpg/txt/json as `smartbrush laion` writes them;
their json has no "task" (a json with "task": "text_to_image" reads the same), and their mask is the
whole image at the coarsest level s = S: the whole image is its own bounding box.

Common dict: {"image": HxWx3 uint8 RGB, "mask": HxW bool, "level": s, "num_levels": S + 1,
"text": caption, "task": "inpainting" | "text_to_image", "key": __key__}.
"""

from __future__ import annotations

import functools
import random

import cv2
import numpy as np

from smartbrush.schemas.shard_sample import TASK_INPAINTING as INPAINTING
from smartbrush.schemas.shard_sample import TASK_TEXT_TO_IMAGE as TEXT_TO_IMAGE
from smartbrush.schemas.shard_sample import (decode_jpeg, sample_level_map, sample_meta, sample_num_levels,  # noqa: F401
                                             sample_task)


@functools.cache
def default_num_levels() -> int:
    """S + 1 of the default schedule, for text-to-image samples (which carry no schedule)."""
    from smartbrush.config import load_schedule

    return load_schedule("smartbrush").num_levels


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def pick_caption(meta: dict, rng: random.Random, p_label: float | None = None) -> str:
    """The text of an inpainting sample. `p_label` None: one of its non-empty captions uniformly (the
    label caption among them). Else the class label with probability p_label and otherwise one of
    its model captions (BLIP), uniformly; the label when it has none."""
    texts = [c["text"] for c in meta.get("captions") or [] if c.get("text", "").strip()]
    if p_label is None:
        return rng.choice(texts) if texts else meta["label"]
    model = [c["text"] for c in meta.get("captions") or [] if c.get("model") != "label" and c.get("text", "").strip()]
    if rng.random() < p_label or not model:
        return meta["label"]
    return rng.choice(model)


def _resize_nearest(m: np.ndarray, w: int, h: int) -> np.ndarray:
    if m.dtype == bool:
        return cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)


def fit(image: np.ndarray, mask: np.ndarray, resolution: int, *more: np.ndarray):
    """Shorter side to `resolution`, then the centre square (area interpolation, nearest for the masks);
    `more` masks are cut the same way and returned after the first two."""
    h, w = mask.shape
    if (h, w) == (resolution, resolution):
        return (image, mask, *more) if more else (image, mask)
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    y, x = (nh - resolution) // 2, (nw - resolution) // 2
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    masks = [_resize_nearest(m, nw, nh)[y:y + resolution, x:x + resolution] for m in (mask, *more)]
    return (image[y:y + resolution, x:x + resolution], *masks)


def training_sample(raw: dict, level: int | None = None, rng: random.Random | None = None,
                    num_levels: int | None = None, resolution: int | None = None,
                    p_label: float | None = None, compact: bool = False) -> dict:
    """The common dict of one raw sample. `level` picks the inpainting mask (None: uniform from `rng`);
    `num_levels` is S + 1 reported for text-to-image samples (default: the default schedule's).
    `exact` is the s = 0 object mask (all False for text-to-image samples: there is no object).
    `compact`: return the uint8 `level_map` instead of the two masks (mask = map <= level,
    exact = map == 0; a text-to-image sample's map is S everywhere), a third of the bytes to move."""
    rng = rng or random.Random(0)
    key = raw.get("__key__", "")
    if sample_task(raw) == INPAINTING:
        meta = sample_meta(raw)
        n = sample_num_levels(raw, meta)
        s = rng.randrange(n) if level is None else level
        if not 0 <= s < n:
            raise ValueError(f"sample {key}: level {s} outside 0..{n - 1}")
        level_map = sample_level_map(raw, meta)  # every level from one decode
        image = decode_jpeg(raw["jpg"])
        out = {"level": s, "num_levels": n, "text": pick_caption(meta, rng, p_label), "task": INPAINTING}
    else:
        n = num_levels or default_num_levels()
        image = decode_jpeg(raw["jpg"])
        level_map = np.full(image.shape[:2], n - 1, np.uint8)
        out = {"level": n - 1, "num_levels": n, "text": _text(raw["txt"]), "task": TEXT_TO_IMAGE}
    if image.shape[:2] != level_map.shape:
        raise ValueError(f"sample {key}: image {image.shape[:2]} and mask {level_map.shape} differ")
    if resolution:
        image, level_map = fit(image, level_map, resolution)
    if compact:
        return {"image": image, "level_map": level_map, "key": key, **out}
    return {"image": image, "mask": level_map <= out["level"], "exact": level_map == 0, "key": key, **out}
