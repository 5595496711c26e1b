"""The training sample interface: a raw WebDataset sample of either kind -> one common dict.

Inpainting samples (pipeline.samples.render_sample) carry json "task": "inpainting" and one mask per
precision level. Text-to-image samples are img2dataset's jpg/txt/json as `smartbrush laion` writes them;
their json has no "task" (a json with "task": "text_to_image" reads the same), and their mask is the
whole image at the coarsest level s = S: the whole image is its own bounding box.

Common dict: {"image": HxWx3 uint8 RGB, "mask": HxW bool, "level": s, "num_levels": S + 1,
"text": caption, "task": "inpainting" | "text_to_image", "key": __key__}.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterable, Iterator

import cv2
import numpy as np
import webdataset as wds
from webdataset.pytorch import IterableDataset  # torch's when installed, else a stub
from webdataset.utils import pytorch_worker_info

from smartbrush.pipeline.render.samples import decode_jpeg, sample_level_map, sample_meta, sample_num_levels

INPAINTING = "inpainting"
TEXT_TO_IMAGE = "text_to_image"
TASKS = (INPAINTING, TEXT_TO_IMAGE)
P_INPAINTING = 0.8  # the paper: 80 % inpainting steps, 20 % text-to-image


@functools.cache
def default_num_levels() -> int:
    """S + 1 of the default schedule, for text-to-image samples (which carry no schedule)."""
    from smartbrush.config import load_schedule

    return load_schedule("smartbrush").num_levels


def _meta(raw: dict) -> dict:
    data = raw.get("json")
    if data is None:
        return {}
    return json.loads(data) if isinstance(data, (bytes, str)) else dict(data)


def sample_task(raw: dict) -> str:
    task = _meta(raw).get("task") or TEXT_TO_IMAGE
    if task not in TASKS:
        raise ValueError(f"sample {raw.get('__key__')}: unknown task {task!r}")
    return task


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


class ToTrainingSample:
    """Picklable map function for a WebDataset pipeline. Its random choices (level, caption) come from a
    generator seeded by (seed, rank, worker), so every DataLoader worker draws its own sequence."""

    def __init__(self, level: int | None = None, num_levels: int | None = None, resolution: int | None = None,
                 seed: int = 0):
        self.level, self.num_levels, self.resolution, self.seed = level, num_levels, resolution, seed
        self._rng: random.Random | None = None

    def __call__(self, raw: dict) -> dict:
        if self._rng is None:
            rank, _, worker, _ = pytorch_worker_info()
            self._rng = random.Random(f"{self.seed}:{rank}:{worker}")
        return training_sample(raw, self.level, self._rng, self.num_levels, self.resolution)


def make_dataset(urls, *, shardshuffle: bool | int = False, seed: int = 0, level: int | None = None,
                 num_levels: int | None = None, resolution: int | None = None, resampled: bool = False,
                 shuffle: int = 0, **webdataset_kwargs):
    """A WebDataset of common dicts over shard `urls` (a list, or a brace pattern).

    `shardshuffle`: False, or a buffer of shards to shuffle (webdataset 0.2.111 wants it explicit);
    `resampled=True` draws shards forever (bound it with .with_epoch(n)); `shuffle` > 0 adds a sample buffer."""
    ds = wds.WebDataset(urls, shardshuffle=False if resampled else shardshuffle, resampled=resampled,
                        seed=seed, empty_check=False, **webdataset_kwargs)
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    return ds.map(ToTrainingSample(level, num_levels, resolution, seed))


class Mix(IterableDataset):
    """Interleaves an inpainting stream and a text-to-image stream: each draw takes the inpainting stream
    with probability p_inpainting, from a generator seeded by (seed, rank, worker). It ends when the
    stream it draws from ends (use resampled datasets for training: they never end)."""

    def __init__(self, inpainting: Iterable, text_to_image: Iterable, p_inpainting: float = P_INPAINTING,
                 seed: int = 0):
        super().__init__()
        if not 0.0 <= p_inpainting <= 1.0:
            raise ValueError(f"p_inpainting must be in [0, 1], got {p_inpainting}")
        self.inpainting, self.text_to_image, self.p, self.seed = inpainting, text_to_image, p_inpainting, seed

    def __iter__(self) -> Iterator:
        rank, _, worker, _ = pytorch_worker_info()
        yield from mix(iter(self.inpainting), iter(self.text_to_image), self.p, f"{self.seed}:{rank}:{worker}")


def mix(inpainting: Iterator, text_to_image: Iterator, p_inpainting: float = P_INPAINTING,
        seed: int | str = 0) -> Iterator:
    rng = random.Random(seed)
    while True:
        source = inpainting if rng.random() < p_inpainting else text_to_image
        try:
            yield next(source)
        except StopIteration:
            return
