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

    The bytes are exactly what tarfile writes for webdataset's TarWriter members (one `key.ext`
    file per member, extensions sorted) with fixed metadata: POSIX ustar headers, a 1024-byte end
    marker, padding to tarfile's 10240-byte record. The headers are built here (tarfile costs about
    40 us per member, more than remask spends on a sample's mask); a name that does not fit a ustar
    header goes through tarfile. tests/test_shard_format.py checks the bytes against tarfile's.
    Workers that only write shards do not import webdataset, which imports torch."""
    n = written = 0
    for key, sample in samples:
        for ext in sorted(sample):
            data = sample[ext]
            header = _ustar_header(f"{key}.{ext}", len(data))
            stream.write(header)
            stream.write(data)
            pad = -len(data) % _BLOCK
            if pad:
                stream.write(_ZEROS[:pad])
            written += len(header) + len(data) + pad
        n += 1
    end = 2 * _BLOCK
    stream.write(_ZEROS[:end] + bytes(-(written + end) % _RECORD))
    return n


_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_ZEROS = bytes(_RECORD)


def _owner_field(name: str) -> bytes:
    return name.encode("ascii").ljust(32, b"\0")


# A regular file's ustar header after the checksum field: type "0", no link name, "ustar\000",
# owner names, empty device fields (tarfile's choice for a regular file) and prefix.
_HEADER_TAIL = (b"0" + bytes(100) + tarfile.POSIX_MAGIC + _owner_field(_TAR_OPTIONS["user"])
                + _owner_field(_TAR_OPTIONS["group"]) + bytes(16 + 155 + 12))
_MODE_IDS = b"%07o\0" % _TAR_OPTIONS["mode"] + b"0000000\0" * 2  # mode, uid 0, gid 0
_MTIME = b"%011o\0" % _TAR_OPTIONS["mtime"]
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME) + sum(_HEADER_TAIL) + 8 * ord(" ")  # checksum counts itself as spaces


def _ustar_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 100 or not raw.isascii() or size >= 8 ** 11:
        info = tarfile.TarInfo(name)  # pax/GNU extensions: tarfile knows them
        info.size, info.mtime, info.mode = size, _TAR_OPTIONS["mtime"], _TAR_OPTIONS["mode"]
        info.uname, info.gname = _TAR_OPTIONS["user"], _TAR_OPTIONS["group"]
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(raw) + sum(size_field)
    return raw.ljust(100, b"\0") + _MODE_IDS + size_field + _MTIME + b"%06o\0 " % checksum + _HEADER_TAIL


def shard_info(name: str, samples: int, digest: fileio.Digest) -> dict:
    """A manifest shard entry (schemas/manifest.py)."""
    return {"name": name, "samples": samples, "bytes": digest.bytes, "sha256": digest.sha256, "crc32": digest.crc32}


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
        self.raw, self.hasher = raw, fileio.Hasher()

    def read(self, n=-1):
        data = self.raw.read(n)
        self.hasher.update(data)
        return data


def scan_tar(path: str) -> tuple[fileio.Digest, set[str]]:
    """(digest, sample keys) of a tar in one read."""
    with fileio.open_read(path) as raw:
        stream = _HashingReader(raw)
        keys = set(member_keys(stream))
        while stream.read(1 << 22):  # the end-of-archive padding tarfile leaves unread
            pass
    return stream.hasher.digest(), keys


def count_samples(path: str) -> int:
    with fileio.open_read(path) as f:
        return len(set(member_keys(f)))


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
    """All raw samples of a tar ({"__key__", ext: bytes}) in file order, by webdataset's own grouping."""
    import webdataset as wds

    with fileio.open_read(path) as f:
        data = f.read()
    stream = wds.tariterators.tar_file_expander([{"stream": io.BytesIO(data), "url": path}])
    return list(wds.tariterators.group_by_keys(stream))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
