"""The training stream: batches drawn from inpainting and text-to-image shard sets, a pure function of
(seed, rank, batch index).

Each batch j of rank r comes from `random.Random(f"{seed}:{r}:{j}")`: it picks a few shards (by
their sample counts), then samples by index inside them (random access through `wids`, webdataset's
indexed reader), the task of each sample (inpainting with probability p_inpainting), its precision
level and its text. Nothing depends on what came before, so a resumed run at step k yields exactly
the batches an uninterrupted run yields, whatever the number of DataLoader workers (worker w makes
batches w, w + W, ...; the DataLoader returns them in order). Ranks draw from disjoint shard subsets
(`shards[rank::world]`) when there are at least as many shards as ranks.

A local set is read in place; a set given as a URL (https://, gs://, s3://, anything fsspec reads)
is read from a node's ShardCache (train/shard_cache.py), where each shard is fetched whole, verified
against the manifest and opened the same way, so batches are byte-identical either way. The shards
of batch j are a pure function of j, so each DataLoader worker fetches those of its next batches in
the background. A shard that fails verification twice is skipped: it is dropped from the shards
drawn for a batch before any sample is drawn (when every drawn shard of a task is skipped, the
task's shards are drawn again from the same generator), so no sample of it is trained on and the
batches stay a pure function of (seed, rank, batch index) and the set's content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from smartbrush.schemas import files
from smartbrush.schemas.manifest import read_manifest_bytes
from smartbrush.schemas.shard_sample import sample_meta
from smartbrush.schemas.shard_set import first_sample, shard_url
from smartbrush.train.data import INPAINTING, TEXT_TO_IMAGE, training_sample
from smartbrush.train.shard_cache import Prefetcher, ShardCache, release_clients

log = logging.getLogger("smartbrush.train")
MAX_SKIPS_PER_BATCH = 64
MAX_REDRAWS = 8  # draws of a task's shards for one batch while every drawn shard is skipped
OPEN_READERS = 16


class ShardSetError(ValueError):
    """A shard set that cannot be trained on, or that disagrees with the config or another set."""


@dataclass(frozen=True)
class ShardSet:
    path: str
    kind: str  # inpainting | text_to_image
    manifest_sha256: str
    # ({"url", "name", "nsamples", "bytes", "crc32" or "sha256", "set": manifest sha256, "cache"}, ...)
    shards: tuple
    num_levels: int | None  # S + 1 of an inpainting set
    sample_version: int | None
    cache: ShardCache | None = None  # where the shards of a set given as a URL are read from

    def lineage(self) -> dict:
        return {"path": self.path, "kind": self.kind, "manifest_sha256": self.manifest_sha256}


def _shard(path: str, entry: dict, sha: str, cache: ShardCache | None) -> dict:
    check = {k: entry[k] for k in ("crc32", "sha256") if k in entry}
    if "crc32" in check:
        check.pop("sha256", None)  # shard_problem checks the CRC-32 when there is one
    return {"url": shard_url(path, entry), "name": entry["name"], "nsamples": entry["samples"],
            "bytes": entry["bytes"], **check, "set": sha, "cache": cache}


def read_shard_set(path: str, kind: str, cache: ShardCache | None = None) -> ShardSet:
    """A shard set, a local folder (read in place) or a URL (read through `cache`, required then)."""
    if not files.is_url(path):
        return _read_shard_set(path, kind, None)
    if cache is None:
        raise ShardSetError(f"{path}: a shard set given as a URL is read through a local shard cache "
                            "(smartbrush train --cache-dir)")
    try:
        return _read_shard_set(path, kind, cache)
    finally:
        release_clients(path)  # before DataLoader workers fork (see release_clients)


def _read_shard_set(path: str, kind: str, cache: ShardCache | None) -> ShardSet:
    try:
        manifest, manifest_data = read_manifest_bytes(path)
    except (FileNotFoundError, ValueError) as e:
        raise ShardSetError(str(e)) from None
    except OSError as e:  # unreachable: the transient errors were retried
        raise ShardSetError(f"{path}: cannot be read: {type(e).__name__}: {e}") from None
    if manifest["kind"] != kind:
        raise ShardSetError(f"{path}: a {manifest['kind']} shard set, given as {kind}")
    sha = hashlib.sha256(manifest_data).hexdigest()
    shards = tuple(_shard(path, s, sha, cache) for s in manifest["shards"] if s["samples"] > 0)
    if not shards:
        raise ShardSetError(f"{path}: no samples")
    num_levels = version = None
    if kind == INPAINTING:
        num_levels = len((manifest.get("mask_schedule") or {}).get("levels") or [])
        try:
            first = first_sample(shards[0]["url"])
        except OSError as e:
            raise ShardSetError(f"{shards[0]['url']}: cannot be read: {type(e).__name__}: {e}") from None
        version = sample_meta(first)["schema_version"]  # raises on an unknown version
    return ShardSet(path, kind, sha, shards, num_levels, version, cache)


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
    """This rank's shards. They are ordered by (manifest sha256, name), not by URL, so that a set
    reads the same from any location."""
    shards = sorted((s for ss in sets for s in ss.shards), key=lambda s: (s["set"], s["name"]))
    if len(shards) < world:
        log.warning("%d shards for %d ranks: ranks share shards", len(shards), world)
        return shards
    return shards[rank::world]


def open_shard(path: str, nsamples: int):
    """Random access by sample index into a local shard (wids' indexed tar reader, mmapped in place)."""
    from wids.wids import IndexedTarSamples

    reader = IndexedTarSamples(path=path)
    if len(reader) != nsamples:
        reader.close()
        raise ShardSetError(f"{path}: {len(reader)} samples, the manifest says {nsamples}")
    return reader


def _raw(item: dict) -> dict:
    """A wids sample ({".ext": stream}) as the raw webdataset dict ({"ext": bytes})."""
    raw = {"__key__": item["__key__"]}
    for k, v in item.items():
        if k.startswith("."):
            raw[k[1:]] = v.read() if hasattr(v, "read") else v
    return raw


_TUNED_PID = None


def reuse_freed_memory() -> None:
    """Keep freed buffers in this process's heap instead of handing them back to the kernel (glibc).
    A sample's decoded image and level map are a few hundred KB each, and with glibc's defaults
    each is mmapped fresh and page-faulted in (about 400 faults a sample at R = 512), which took
    about 40 % of the loader's CPU time; reused heap memory costs none. Once per process."""
    global _TUNED_PID
    if _TUNED_PID == os.getpid():
        return
    _TUNED_PID = os.getpid()
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value on 64-bit
    mallopt(m_trim_threshold, 512 << 20)


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
        self._readers: OrderedDict = OrderedDict()
        self._prefetchers: dict = {}
        for cache in self.caches():
            cache.report_need([s for shards in self.shards.values() for s in shards if s["cache"] is cache], rank)

    def caches(self) -> list[ShardCache]:
        found = {id(s["cache"]): s["cache"] for shards in self.shards.values() for s in shards if s["cache"]}
        return list(found.values())

    def __getstate__(self):  # open readers and fetch threads stay in their process
        return {**self.__dict__, "_readers": OrderedDict(), "_prefetchers": {}}

    def _reader(self, shard: dict):
        """The open shard, or None for a shard its cache skipped."""
        cache = shard["cache"]
        reader = self._readers.get(shard["url"])
        if reader is not None:
            if cache is None or cache.touch(shard):
                self._readers.move_to_end(shard["url"])
                return reader
            self._readers.pop(shard["url"]).close()  # evicted: reading on would hold its disk space
        for attempt in range(2):
            path = shard["url"] if cache is None else cache.path(shard)
            if path is None:
                return None
            try:
                reader = open_shard(path, shard["nsamples"])
                break
            except FileNotFoundError:  # evicted by another process between fetch and open
                if cache is None or attempt:
                    raise
        if len(self._readers) >= OPEN_READERS:
            self._readers.popitem(last=False)[1].close()
        self._readers[shard["url"]] = reader
        return reader

    def shards_of(self, j: int) -> tuple[random.Random, dict]:
        """The generator of batch j and the shards it draws per task, before any is read."""
        rng = random.Random(f"{self.seed}:{self.rank}:{j}")
        picked = {task: rng.choices(shards, weights=[s["nsamples"] for s in shards], k=self.shards_per_batch)
                  for task, shards in self.shards.items() if shards}
        return rng, picked

    def _readable(self, j: int, rng: random.Random, picked: dict) -> tuple[dict, int]:
        """The open readers of the shards drawn for batch j, without the skipped ones (dropped from
        `picked` in place; a task's shards are drawn again while all of them are skipped), and the
        number of skipped shards dropped."""
        for url, reader in list(self._readers.items()):  # closed once evicted: they hold its disk space
            if not os.path.exists(reader.path):
                self._readers.pop(url).close()
        readers, dropped = {}, 0
        for task, shards in picked.items():
            for _ in range(MAX_REDRAWS):
                for s in shards:
                    if s["url"] not in readers:
                        readers[s["url"]] = self._reader(s)
                readable = [s for s in shards if readers[s["url"]] is not None]
                dropped += len(shards) - len(readable)
                if readable:
                    picked[task] = readable
                    break
                pool = self.shards[task]
                shards = rng.choices(pool, weights=[s["nsamples"] for s in pool], k=self.shards_per_batch)
            else:
                raise ShardSetError(f"batch {j}: every {task} shard drawn {MAX_REDRAWS} times was skipped "
                                    "(failed verification): is the shard set damaged?")
        return readers, dropped

    def batch(self, j: int) -> dict:
        """Batch j of this rank."""
        reuse_freed_memory()
        rng, picked = self.shards_of(j)
        readers, skipped_shards = self._readable(j, rng, picked)
        samples, skipped = [], 0
        while len(samples) < self.batch_size:
            task = INPAINTING if rng.random() < self.p_inpainting else TEXT_TO_IMAGE
            shard = rng.choice(picked[task])
            index = rng.randrange(shard["nsamples"])
            try:
                raw = _raw(readers[shard["url"]][index])
                samples.append(training_sample(raw, self.level, rng, self.num_levels, self.resolution, self.p_label,
                                               compact=True))
            except Exception as e:  # a corrupt sample is skipped and counted, never fatal
                skipped += 1
                log.warning("skipping sample %d of %s: %s: %s", index, shard["url"], type(e).__name__, e)
                if skipped > MAX_SKIPS_PER_BATCH:
                    raise RuntimeError(f"more than {MAX_SKIPS_PER_BATCH} unreadable samples in one batch "
                                       f"(last: {shard['url']}): is the shard set damaged?") from e
        return {**collate(samples), "skipped": skipped, "skipped_shards": skipped_shards, "batch_index": j}

    def prefetch(self, j: int, step: int) -> None:
        """Start fetching the remote shards of batches j, j + step, ... (cache.prefetch_batches of them)."""
        for cache in self.caches():
            if cache.prefetch_batches <= 0:
                continue
            fetcher = self._prefetchers.get(id(cache))
            if fetcher is None:
                fetcher = self._prefetchers[id(cache)] = Prefetcher(cache)
            wanted = [s for k in range(cache.prefetch_batches + 1) for shards in self.shards_of(j + k * step)[1].values()
                      for s in shards if s["cache"] is cache]
            fetcher.submit(list({s["url"]: s for s in wanted}.values()))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        j = self.start_batch + worker
        while True:
            self.prefetch(j, workers)
            yield self.batch(j)
            j += workers
