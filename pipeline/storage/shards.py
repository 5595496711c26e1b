"""WebDataset tar shards: deterministic assignment, deterministic bytes, atomic writes, resume."""

from __future__ import annotations

import hashlib
import io
import tarfile

from smartbrush.pipeline.storage import fileio

# Fixed member metadata so that equal samples give byte-identical tars.
# mtime is an int: a float makes tarfile write a pax header before every member.
_TAR_OPTIONS = {"user": "smartbrush", "group": "smartbrush", "mode": 0o644, "mtime": 0}


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def write_tar(stream, samples: list[tuple[str, dict]]) -> None:
    """Samples sorted by key; members of a sample in sorted extension order (webdataset's own)."""
    write_tar_stream(stream, sorted(samples, key=lambda kv: kv[0]))


def write_tar_stream(stream, samples) -> int:
    """Write (key, sample) pairs as they come, holding none of them; returns how many were written.

    The members are what webdataset's TarWriter writes (one `key.ext` file per member, extensions
    sorted), with fixed metadata; tarfile is used directly so that a worker that only writes shards
    does not import webdataset, which imports torch."""
    n = 0
    with tarfile.open(fileobj=stream, mode="w|") as tar:
        for key, sample in samples:
            for ext in sorted(sample):
                data = sample[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), _TAR_OPTIONS["mtime"], _TAR_OPTIONS["mode"]
                info.uname, info.gname = _TAR_OPTIONS["user"], _TAR_OPTIONS["group"]
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def shard_info(name: str, samples: int, nbytes: int, sha256: str) -> dict:
    return {"name": name, "samples": samples, "bytes": nbytes, "sha256": sha256}


def member_keys(fileobj, *, tolerant: bool = False) -> list[str]:
    """Sample keys of a tar stream in order, one per run of members sharing a key (our keys hold no
    dots). `tolerant`: stop quietly at the first damaged header and return the keys read so far."""
    keys: list[str] = []
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key = member.name.split(".", 1)[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
    except (tarfile.TarError, OSError, EOFError):
        if not tolerant:
            raise
    return keys


class _HashingReader:
    def __init__(self, raw):
        self.raw, self.sha256, self.bytes = raw, hashlib.sha256(), 0

    def read(self, n=-1):
        data = self.raw.read(n)
        self.sha256.update(data)
        self.bytes += len(data)
        return data


def scan_tar(path: str) -> tuple[int, str, set[str]]:
    """(bytes, sha256, sample keys) of a tar in one read."""
    with fileio.open_read(path) as raw:
        stream = _HashingReader(raw)
        keys = set(member_keys(stream))
        while stream.read(1 << 22):  # the end-of-archive padding tarfile leaves unread
            pass
    return stream.bytes, stream.sha256.hexdigest(), keys


def count_samples(path: str) -> int:
    with fileio.open_read(path) as f:
        return len(set(member_keys(f)))


def existing_shard_info(path: str, name: str) -> dict:
    nbytes, sha = fileio.sha256_file(path)
    return shard_info(name, count_samples(path), nbytes, sha)


def write_shard(out_dir: str, name: str, samples: list[tuple[str, dict]]) -> tuple[dict, bool]:
    """Write one shard atomically unless a complete one is already there (resume).

    Returns (shard info, whether it was written now)."""
    path = fileio.join(out_dir, name)
    if fileio.exists(path):
        return existing_shard_info(path, name), False
    nbytes, sha = fileio.atomic_write(path, lambda stream: write_tar(stream, samples))
    return shard_info(name, len(samples), nbytes, sha), True


def read_shard(path: str) -> list[dict]:
    """All raw samples of a tar ({"__key__", ext: bytes}) in file order, by webdataset's own grouping."""
    import webdataset as wds

    with fileio.open_read(path) as f:
        data = f.read()
    stream = wds.tariterators.tar_file_expander([{"stream": io.BytesIO(data), "url": path}])
    return list(wds.tariterators.group_by_keys(stream))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
