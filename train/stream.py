"""The training stream: batches drawn from inpainting and text-to-image shard sets, a pure function of
(seed, rank, batch index).

Each batch j of rank r comes from `random.Random(f"{seed}:{r}:{j}")`: it picks a few shards (by
their sample counts), then samples by index inside them (random access through `wids`, webdataset's
indexed reader), the task of each sample (inpainting with probability p_inpainting), its precision
level and its text. Nothing depends on what came before, so a resumed run at step k yields exactly
the batches an uninterrupted run yields, whatever the number of DataLoader workers (worker w makes
batches w, w + W, ...; the DataLoader returns them in order). Ranks draw from disjoint shard subsets
(`shards[rank::world]`) when there are at least as many shards as ranks.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from smartbrush.schemas.manifest import read_manifest_bytes
from smartbrush.schemas.shard_sample import sample_meta
from smartbrush.schemas.shard_set import first_sample, shard_url
from smartbrush.train.data import INPAINTING, TEXT_TO_IMAGE, training_sample

log = logging.getLogger("smartbrush.train")
MAX_SKIPS_PER_BATCH = 64


class ShardSetError(ValueError):
    """A shard set that cannot be trained on, or that disagrees with the config or another set."""


@dataclass(frozen=True)
class ShardSet:
    path: str
    kind: str  # inpainting | text_to_image
    manifest_sha256: str
    shards: tuple  # ({"url", "nsamples"}, ...)
    num_levels: int | None  # S + 1 of an inpainting set
    sample_version: int | None

    def lineage(self) -> dict:
        return {"path": self.path, "kind": self.kind, "manifest_sha256": self.manifest_sha256}


def read_shard_set(path: str, kind: str) -> ShardSet:
    try:
        manifest, manifest_data = read_manifest_bytes(path)
    except (FileNotFoundError, ValueError) as e:
        raise ShardSetError(str(e)) from None
    if manifest["kind"] != kind:
        raise ShardSetError(f"{path}: a {manifest['kind']} shard set, given as {kind}")
    shards = tuple({"url": shard_url(path, s), "nsamples": s["samples"]} for s in manifest["shards"]
                   if s["samples"] > 0)
    if not shards:
        raise ShardSetError(f"{path}: no samples")
    sha = hashlib.sha256(manifest_data).hexdigest()
    num_levels = version = None
    if kind == INPAINTING:
        num_levels = len((manifest.get("mask_schedule") or {}).get("levels") or [])
        version = sample_meta(first_sample(shards[0]["url"]))["schema_version"]  # raises on an unknown version
    return ShardSet(path, kind, sha, shards, num_levels, version)


def check_shard_sets(inpainting: list[ShardSet], text_to_image: list[ShardSet], num_levels: int | None) -> int:
    """S + 1 shared by every inpainting set (and the config, when it names one); the error names both."""
    if not inpainting:
        raise ShardSetError("no inpainting shard set (--inpainting-shards)")
    first = inpainting[0]
    for other in inpainting[1:]:
        if (other.num_levels, other.sample_version) != (first.num_levels, first.sample_version):
            raise ShardSetError(f"{first.path} has {first.num_levels} levels (sample format v{first.sample_version}), "
                                f"{other.path} has {other.num_levels} (v{other.sample_version})")
    if num_levels and num_levels != first.num_levels:
        raise ShardSetError(f"the config says {num_levels} precision levels, {first.path} has {first.num_levels}")
    return first.num_levels


def rank_shards(sets: list[ShardSet], rank: int, world: int) -> list[dict]:
    shards = sorted((s for ss in sets for s in ss.shards), key=lambda s: s["url"])
    if len(shards) < world:
        log.warning("%d shards for %d ranks: ranks share shards", len(shards), world)
        return shards
    return shards[rank::world]


def _raw(item: dict) -> dict:
    """A wids sample ({".ext": stream}) as the raw webdataset dict ({"ext": bytes})."""
    raw = {"__key__": item["__key__"]}
    for k, v in item.items():
        if k.startswith("."):
            raw[k[1:]] = v.read() if hasattr(v, "read") else v
    return raw


def collate(samples: list[dict]) -> dict:
    """Tensors of a batch, compact for the trip from DataLoader workers: images uint8 [B, 3, R, R] and
    level maps uint8 [B, 1, R, R]; `to_model_inputs` makes the image and masks on the device."""
    return {"image": torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2),
            "level_map": torch.from_numpy(np.stack([s["level_map"] for s in samples]))[:, None],
            "level": torch.tensor([s["level"] for s in samples], dtype=torch.long),
            "is_inpainting": torch.tensor([s["task"] == INPAINTING for s in samples]),
            "text": [s["text"] for s in samples], "key": [s["key"] for s in samples]}


def batch_masks(batch: dict, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask at each sample's level, exact s = 0 mask) as bool [B, 1, R, R]."""
    level_map = batch["level_map"].to(device) if device is not None else batch["level_map"]
    level = batch["level"].to(level_map.device).view(-1, 1, 1, 1)
    return level_map <= level, level_map == 0


def to_model_inputs(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image in [-1, 1], mask, exact mask) as float tensors on `device`."""
    image = batch["image"].to(device, non_blocking=True).float() / 127.5 - 1.0
    mask, exact = batch_masks(batch, device)
    return image, mask.float(), exact.float()


class BatchStream(IterableDataset):
    """Infinite batches (collated tensors) from batch `start_batch` on; see the module docstring."""

    def __init__(self, inpainting: list[ShardSet], text_to_image: list[ShardSet], *, batch_size: int, resolution: int,
                 num_levels: int, seed: int = 0, p_inpainting: float = 0.8, p_label: float = 0.5,
                 level: int | None = None, shards_per_batch: int = 4, rank: int = 0, world: int = 1,
                 start_batch: int = 0):
        super().__init__()
        self.shards = {INPAINTING: rank_shards(inpainting, rank, world),
                       TEXT_TO_IMAGE: rank_shards(text_to_image, rank, world) if text_to_image else []}
        self.batch_size, self.resolution, self.num_levels, self.seed = batch_size, resolution, num_levels, seed
        self.p_inpainting = p_inpainting if text_to_image else 1.0
        self.p_label, self.level, self.shards_per_batch = p_label, level, shards_per_batch
        self.rank, self.start_batch = rank, start_batch
        self._readers: dict = {}

    def _reader(self, shard: dict):
        reader = self._readers.get(shard["url"])
        if reader is None:
            import contextlib
            import io

            import wids

            with contextlib.redirect_stderr(io.StringIO()):  # wids prints a summary line per dataset
                reader = wids.ShardListDataset([shard], transformations=[], lru_size=1)
            if len(self._readers) >= 16:
                self._readers.pop(next(iter(self._readers)))
            self._readers[shard["url"]] = reader
        return reader

    def batch(self, j: int) -> dict:
        """Batch j of this rank."""
        rng = random.Random(f"{self.seed}:{self.rank}:{j}")
        picked = {task: rng.choices(shards, weights=[s["nsamples"] for s in shards], k=self.shards_per_batch)
                  for task, shards in self.shards.items() if shards}
        samples, skipped = [], 0
        while len(samples) < self.batch_size:
            task = INPAINTING if rng.random() < self.p_inpainting else TEXT_TO_IMAGE
            shard = rng.choice(picked[task])
            index = rng.randrange(shard["nsamples"])
            try:
                raw = _raw(self._reader(shard)[index])
                samples.append(training_sample(raw, self.level, rng, self.num_levels, self.resolution, self.p_label,
                                               compact=True))
            except Exception as e:  # a corrupt sample is skipped and counted, never fatal
                skipped += 1
                log.warning("skipping sample %d of %s: %s: %s", index, shard["url"], type(e).__name__, e)
                if skipped > MAX_SKIPS_PER_BATCH:
                    raise RuntimeError(f"more than {MAX_SKIPS_PER_BATCH} unreadable samples in one batch "
                                       f"(last: {shard['url']}): is the shard set damaged?") from e
        return {**collate(samples), "skipped": skipped, "batch_index": j}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        j = self.start_batch + worker
        while True:
            yield self.batch(j)
            j += workers
