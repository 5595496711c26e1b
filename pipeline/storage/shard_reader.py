"""Iterate the raw samples of a finished shard set, in manifest order (Beam's FileSystems)."""

from __future__ import annotations

from collections.abc import Iterator

from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.manifest import read_manifest
from smartbrush.pipeline.storage.shards import read_shard


def iter_samples(out_dir: str, limit: int | None = None) -> Iterator[dict]:
    n = 0
    for shard in read_manifest(out_dir)["shards"]:
        for sample in read_shard(fileio.join(out_dir, shard["name"])):
            if limit is not None and n >= limit:
                return
            n += 1
            yield sample
