"""File access through Beam's FileSystems (local, gs://, s3://, ...) with atomic writes."""

from __future__ import annotations

import hashlib
import os
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def open_read(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def makedirs(path: str) -> None:
    if "://" not in path:
        os.makedirs(path, exist_ok=True)
    # Object stores have no directories.


def sha256_file(path: str, chunk: int = 1 << 22) -> tuple[int, str]:
    """(bytes, sha256 hex) of a file, streamed."""
    h, n = hashlib.sha256(), 0
    with open_read(path) as f:
        while block := f.read(chunk):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


class HashingWriter:
    """A write-only stream that counts and hashes what passes through it."""

    def __init__(self, raw):
        self.raw, self.sha256, self.bytes = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.raw.write(data)

    def flush(self):
        pass


def temp_path(final: str) -> str:
    directory, name = final.rsplit("/", 1) if "/" in final else (".", final)
    return f"{directory}/.tmp-{uuid.uuid4().hex[:12]}-{name}"


def atomic_write(final: str, write_fn) -> tuple[int, str]:
    """Run write_fn(stream) into a temporary file, then rename it to `final`.

    Returns (bytes, sha256). A crash leaves only a `.tmp-*` file, never a partial `final`.
    """
    tmp = temp_path(final)
    try:
        with FileSystems.create(tmp, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            stream = HashingWriter(raw)
            write_fn(stream)
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([tmp], [final])
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise
    return stream.bytes, stream.sha256.hexdigest()


def atomic_write_bytes(final: str, data: bytes) -> tuple[int, str]:
    return atomic_write(final, lambda s: s.write(data))
