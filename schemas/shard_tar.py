"""WebDataset tar shards: the one writer and the one reader of the shard container.

A shard is a POSIX tar of regular files named `KEY.EXT`; the members of a sample are consecutive and
in sorted extension order (webdataset's own convention). The writer gives deterministic bytes (fixed
member metadata); the reader groups members into samples the way webdataset does
({"__key__", "__url__", ext: bytes}) and has options for the narrower reads (keys only, some
members only, tolerant of a damaged tail). No Beam and no webdataset import: workers that only write
shards and the training loader both use it.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Iterator

# Fixed member metadata so that equal samples give byte-identical tars.
# mtime is an int: a float makes tarfile write a pax header before every member.
TAR_OPTIONS = {"user": "smartbrush", "group": "smartbrush", "mode": 0o644, "mtime": 0}
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_ZEROS = bytes(_RECORD)


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


# ---------------------------------------------------------------------------------------- writing

def write_tar(stream, samples: list[tuple[str, dict]]) -> int:
    """Samples sorted by key; members of a sample in sorted extension order (webdataset's own)."""
    return write_tar_stream(stream, sorted(samples, key=lambda kv: kv[0]))


def write_tar_stream(stream, samples: Iterable[tuple[str, dict]]) -> int:
    """Write (key, sample) pairs as they come, holding none of them; returns how many were written.

    The bytes are exactly what tarfile writes for webdataset's TarWriter members (one `key.ext`
    file per member, extensions sorted) with fixed metadata: POSIX ustar headers, a 1024-byte end
    marker, padding to tarfile's 10240-byte record. The headers are built here (tarfile costs about
    40 us per member, more than remask spends on a sample's mask); a name that does not fit a ustar
    header goes through tarfile. tests/test_shard_format.py checks the bytes against tarfile's."""
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


def tar_bytes(samples: list[tuple[str, dict]]) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, samples)
    return buf.getvalue()


def _owner_field(name: str) -> bytes:
    return name.encode("ascii").ljust(32, b"\0")


# A regular file's ustar header after the checksum field: type "0", no link name, "ustar\000",
# owner names, empty device fields (tarfile's choice for a regular file) and prefix.
_HEADER_TAIL = (b"0" + bytes(100) + tarfile.POSIX_MAGIC + _owner_field(TAR_OPTIONS["user"])
                + _owner_field(TAR_OPTIONS["group"]) + bytes(16 + 155 + 12))
_MODE_IDS = b"%07o\0" % TAR_OPTIONS["mode"] + b"0000000\0" * 2  # mode, uid 0, gid 0
_MTIME = b"%011o\0" % TAR_OPTIONS["mtime"]
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME) + sum(_HEADER_TAIL) + 8 * ord(" ")  # checksum counts itself as spaces


def _ustar_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 100 or not raw.isascii() or size >= 8 ** 11:
        info = tarfile.TarInfo(name)  # pax/GNU extensions: tarfile knows them
        info.size, info.mtime, info.mode = size, TAR_OPTIONS["mtime"], TAR_OPTIONS["mode"]
        info.uname, info.gname = TAR_OPTIONS["user"], TAR_OPTIONS["group"]
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(raw) + sum(size_field)
    return raw.ljust(100, b"\0") + _MODE_IDS + size_field + _MTIME + b"%06o\0 " % checksum + _HEADER_TAIL


# ---------------------------------------------------------------------------------------- reading

def split_name(name: str) -> tuple[str, str]:
    """(key, ext) of a member name: the key is the name up to the first dot of its last path part,
    the extension lower-cased (webdataset's rule)."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def read_tar(source, url: str = "", *, exts: set[str] | None = None, tolerant: bool = False) -> Iterator[dict]:
    """The samples of a tar in file order: {"__key__", "__url__", ext: bytes, ...}.

    `source` is the tar's bytes or a binary stream (streamed, one sample in memory at a time).
    `exts`: read only these members (the others are skipped, and a sample with none of them is not
    yielded). `tolerant`: stop quietly at the first damaged header instead of raising.
    A member that repeats an extension within a sample raises ValueError, as webdataset does."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        plain = _parse_plain_tar(bytes(source), url)
        if plain is not None:
            for sample in plain:
                if exts is not None:
                    sample = {k: v for k, v in sample.items() if k.startswith("__") or k in exts}
                    if len(sample) == 2:
                        continue
                yield sample
            return
        source = io.BytesIO(source)
    yield from _stream_tar(source, url, exts, tolerant)


def read_samples(source, url: str = "") -> list[dict]:
    """Every sample of a tar (bytes or stream), in file order."""
    return list(read_tar(source, url))


def sample_keys(source, *, tolerant: bool = False) -> list[str]:
    """Sample keys of a tar (bytes or stream) in order, read from the member headers only."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    keys: list[str] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key = split_name(member.name)[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
    except (tarfile.TarError, OSError, EOFError):
        if not tolerant:
            raise
    return keys


def _stream_tar(stream, url: str, exts: set[str] | None, tolerant: bool) -> Iterator[dict]:
    current: dict | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_name(member.name)
                if current is None or current["__key__"] != key:
                    if current is not None and len(current) > 2:
                        yield current
                    current = {"__key__": key, "__url__": url}
                if exts is not None and ext not in exts:
                    continue
                if ext in current:
                    raise ValueError(f"{url}: sample {key} has two {ext!r} members")
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError):
        if not tolerant:
            raise
        return
    if current is not None and len(current) > 2:
        yield current


_MEMBER_NAME = re.compile(rb"^([^./]+)\.([^/A-Z]+)$")  # KEY.EXT, no directories, lower-case extension
_ZERO_BLOCK = bytes(512)
_PAX_HARMLESS = {b"mtime", b"atime", b"ctime", b"uname", b"gname", b"uid", b"gid"}


def _harmless_pax(records: bytes) -> bool:
    """Whether pax records ("LEN KEY=VALUE\n" ...) only set times and owners (tarfile writes the
    mtime of every member this way), not the name or size a member is read by."""
    pos = 0
    while pos < len(records):
        space = records.find(b" ", pos)
        try:
            length = int(records[pos:space])
        except ValueError:
            return False
        record = records[space + 1:pos + length]
        if length <= 0 or not record.endswith(b"\n") or record.split(b"=", 1)[0] not in _PAX_HARMLESS:
            return False
        pos += length
    return True


def _parse_plain_tar(data: bytes, url: str) -> list[dict] | None:
    """The samples of an archive that holds only regular ustar members named KEY.EXT with valid
    header checksums, ends with a zero block and is complete; None for anything else (tarfile then
    reads it, or says what is wrong). Several times faster than tarfile on what the writer writes."""
    samples: list[dict] = []
    pos, end = 0, len(data)
    while True:
        if pos + 512 > end:
            return None
        header = data[pos:pos + 512]
        if header == _ZERO_BLOCK:
            return samples if data.count(0, pos) == end - pos else None  # C speed over the end padding
        kind = header[156:157]
        if header[257:262] != b"ustar" or kind not in (b"0", b"\0", b"x") or header[345:346] != b"\0":
            return None
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            checksum = int(header[148:156].strip(b"\0 "), 8)
        except ValueError:
            return None
        if checksum != sum(header[:148]) + 256 + sum(header[156:]) or pos + 512 + size > end:
            return None
        if kind == b"x":  # a pax header for the next member: only metadata that does not change it
            if not _harmless_pax(data[pos + 512:pos + 512 + size]):
                return None
            pos += 512 + (size + 511) // 512 * 512
            continue
        match = _MEMBER_NAME.match(header[:100].rstrip(b"\0"))
        if match is None or match.group(1).startswith(b"__"):
            return None
        start = pos + 512
        key, ext = match.group(1).decode(), match.group(2).decode()
        if not samples or samples[-1]["__key__"] != key:
            samples.append({"__key__": key, "__url__": url})
        elif ext in samples[-1]:
            return None  # a duplicate member: the general reader raises for it
        samples[-1][ext] = data[start:start + size]
        pos = start + (size + 511) // 512 * 512
