"""Which shard each source image goes to, decided from keys and instance counts alone.

Images are taken in key order and packed greedily: a new shard starts when the next image would
push the current one past `samples_per_shard`. An image is never split, so every source image is
read and decoded once for all of its instances. The plan depends only on the set of (image key,
instance count) pairs, never on workers, bundles or which images later fail to decode; it is a list
of boundaries (the first image key of every shard), a few bytes per shard.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable


def image_key(rows: list[dict]) -> str:
    """An image's key: its smallest instance_id (unique, and sorts with its instances)."""
    return min(r["instance_id"] for r in rows)


def plan_boundaries(image_counts: Iterable[tuple[str, int]], samples_per_shard: int) -> list[str]:
    """First image key of each shard. A shard holds more than samples_per_shard samples only when one
    image alone has more instances than that."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    boundaries: list[str] = []
    filled = 0
    for key, n in sorted(image_counts):
        if not boundaries or (filled > 0 and filled + n > samples_per_shard):
            boundaries.append(key)
            filled = 0
        filled += n
    return boundaries


def shard_of(key: str, boundaries: list[str]) -> int:
    """Index of the shard holding image `key` (keys before the first boundary cannot occur)."""
    index = bisect.bisect_right(boundaries, key) - 1
    if index < 0:
        raise KeyError(f"image key {key!r} sorts before the first shard boundary {boundaries[:1]}")
    return index


def plan_digest(instance_ids: Iterable[str]) -> str:
    """Content address of a shard's plan: the sha256 of its sorted instance ids."""
    h = hashlib.sha256()
    for instance_id in sorted(instance_ids):
        h.update(instance_id.encode())
        h.update(b"\n")
    return h.hexdigest()


def chunk_of(source: str, image_id: str, chunks: int) -> int:
    """The build chunk of a source image: a stable hash of (source, image id), so that every
    instance of an image lands in the same chunk whatever the runner."""
    if chunks == 1:
        return 0
    return int(hashlib.sha256(f"{source}/{image_id}".encode()).hexdigest()[:12], 16) % chunks


def chunk_prefix(prefix: str, chunk: int, chunks: int) -> str:
    """Shard name prefix of a chunk: `inpainting` for an unchunked build, `inpainting-c0003` else."""
    return prefix if chunks == 1 else f"{prefix}-c{chunk:04d}"
