"""Shard files through Beam's FileSystems: atomic writes that resume, and digests of finished shards.
The tar container itself (writer and reader) is schemas/shard_tar.py."""

from __future__ import annotations

from smartbrush.pipeline.storage import fileio
from smartbrush.schemas.manifest import shard_info
from smartbrush.schemas.shard_tar import read_samples, sample_keys, shard_name, write_tar  # noqa: F401


class _HashingReader:
    def __init__(self, raw):
        self.raw, self.hasher = raw, fileio.Hasher()

    def read(self, n=-1):
        data = self.raw.read(n)
        self.hasher.update(data)
        return data


def scan_tar(path: str) -> tuple[fileio.Digest, set[str]]:
    """(digest, sample keys) of a tar in one read."""
    with fileio.open_read(path) as raw:
        stream = _HashingReader(raw)
        keys = set(sample_keys(stream))
        while stream.read(1 << 22):  # the end-of-archive padding tarfile leaves unread
            pass
    return stream.hasher.digest(), keys


def count_samples(path: str) -> int:
    with fileio.open_read(path) as f:
        return len(set(sample_keys(f)))


def existing_shard_info(path: str, name: str) -> dict:
    return shard_info(name, count_samples(path), fileio.digest_file(path))


def write_shard(out_dir: str, name: str, samples: list[tuple[str, dict]]) -> tuple[dict, bool]:
    """Write one shard atomically unless a complete one is already there (resume).

    Returns (shard info, whether it was written now)."""
    path = fileio.join(out_dir, name)
    if fileio.exists(path):
        return existing_shard_info(path, name), False
    digest = fileio.atomic_write(path, lambda stream: write_tar(stream, samples))
    return shard_info(name, len(samples), digest), True


def read_shard(path: str) -> list[dict]:
    """All raw samples of a shard ({"__key__", "__url__", ext: bytes}) in file order."""
    return read_samples(fileio.read_bytes(path), path)
