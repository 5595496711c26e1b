"""A finished shard set read without Beam (a local folder or a URL): its manifest, its shards' URLs
and its samples in manifest order, through schemas/files.py and the one tar reader."""

from __future__ import annotations

from collections.abc import Iterator

from smartbrush.schemas import files
from smartbrush.schemas.manifest import read_manifest
from smartbrush.schemas.shard_tar import read_tar


def shard_url(shard_set: str, entry: dict) -> str:
    return files.join(shard_set, entry["name"])


def iter_shard(url: str, exts: set[str] | None = None) -> Iterator[dict]:
    """The samples of one shard, streamed (one sample in memory at a time)."""
    with files.open_read(url) as f:
        yield from read_tar(f, url, exts=exts)


def iter_samples(shard_set: str, limit: int | None = None, exts: set[str] | None = None,
                 manifest: dict | None = None) -> Iterator[dict]:
    """Every sample of the set in manifest order (the first `limit`); `exts` reads only those members."""
    manifest = manifest or read_manifest(shard_set)
    n = 0
    for entry in manifest["shards"]:
        for sample in iter_shard(shard_url(shard_set, entry), exts):
            if limit is not None and n >= limit:
                return
            n += 1
            yield sample


def first_sample(url: str) -> dict:
    """The first sample of a shard (reads only as far as it)."""
    for sample in iter_shard(url):
        return sample
    raise ValueError(f"{url}: no samples")
