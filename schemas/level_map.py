"""The v2 `levels.png` codec: a sample's whole mask ladder as one 8-bit level map.

A pixel's value is the smallest precision level s whose mask holds it (0 = exact ... S = box),
OUTSIDE (255) outside the box; the mask at level s is `map <= s`, so the ladder nests by
construction. The PNG is written directly (no imaging library; any PNG reader decodes it; the same
map always gives the same bytes), and decoded fast when it is one this module wrote.
"""

from __future__ import annotations

import functools
import struct
import zlib

import cv2
import numpy as np
from zlib_ng import zlib_ng

OUTSIDE = 255  # level-map value of pixels outside the box (outside every level)
MAX_LEVELS = 255  # S + 1 <= 255: values 0..254 are levels, 255 is OUTSIDE


def levels_from_map(level_map: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """The bool masks s = 0 ... num_levels - 1 of a level map."""
    return [level_map <= s for s in range(num_levels)]


def map_from_levels(levels: list[np.ndarray]) -> np.ndarray:
    """The level map of a list of nested bool masks (index = level); each pixel gets the smallest
    level that contains it, OUTSIDE where none does."""
    if not 2 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"{len(levels)} levels; a level map holds 2..{MAX_LEVELS}")
    out = np.full(levels[0].shape, OUTSIDE, np.uint8)
    for s in range(len(levels) - 1, -1, -1):
        out[np.asarray(levels[s], dtype=bool)] = s
    return out


def check_level_map(level_map: np.ndarray, num_levels: int, where: str = "level map") -> np.ndarray:
    """`level_map` itself when every value is a level (< num_levels) or OUTSIDE; else ValueError."""
    if np.count_nonzero(level_map >= num_levels) != np.count_nonzero(level_map == OUTSIDE):
        bad = np.unique(level_map[(level_map >= num_levels) & (level_map != OUTSIDE)])
        raise ValueError(f"{where}: values {bad[:5].tolist()} are neither a level 0..{num_levels - 1} nor "
                         f"{OUTSIDE}")
    return level_map


def _chunk_crc(kind: bytes, body) -> int:
    return zlib_ng.crc32(body, zlib_ng.crc32(kind))  # zlib.crc32(kind + body), without the copy


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", _chunk_crc(kind, data))


# The level-map PNG is written so that its cost follows the box, not the image: the rows above and
# below the box are constant (OUTSIDE) and are compressed once per (row count, width) and cached;
# only the box rows are filtered and compressed per sample. The IDAT stream is one zlib stream made
# of raw-deflate segments, each ending on a byte boundary (sync flush, or the final block):
#   zlib header | top rows | box rows | bottom rows | Adler-32       (every row with filter None)
# and a private ancillary chunk (ignored by every PNG reader) records where the box segment lies, so
# that decode_level_map can inflate only the box rows after checking that the other segments are
# byte for byte the canonical ones. Any other PNG (or one that does not check out) is decoded by
# OpenCV.
_LAYOUT_CHUNK = b"lvMp"  # ancillary, private, safe to copy: y0, y1, box segment offset and length
_ZLIB_HEADER = b"\x78\x01"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ADLER_BASE = 65521


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of A + B from those of A and B and the length of B (zlib's adler32_combine)."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (sum2 + ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem) % _ADLER_BASE
    return sum1 | (sum2 << 16)


def _deflate_box(raw, last: bool) -> bytes:
    """The box rows: zlib's run-length strategy (Z_RLE) through zlib-ng, about 2.3x faster than
    zlib's level 1 and smaller on level maps (runs of one level along each row); the bytes are
    those of the standard library's zlib with the same settings (tests/test_shard_format.py).
    (ISA-L is faster still but does not always give the same bytes for the same map, which would
    break byte-identical shards.)"""
    z = zlib_ng.compressobj(1, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_RLE)
    return z.compress(raw) + z.flush(zlib_ng.Z_FINISH if last else zlib_ng.Z_SYNC_FLUSH)


class _ConstantRows:
    """The canonical segment of n rows of OUTSIDE (filter None) of one width: what zlib level 1
    (default strategy) gives for those rows in one call, sync-flushed, or finished when `last`. These
    bytes are fixed: files already written keep their fast decode path.

    Any n is cut from checkpoints of one running zlib stream every CHECKPOINT rows: the output up to
    the checkpoint below n, then a copy of the stream there fed the remaining rows and flushed. zlib's
    output does not depend on how its input is split (tests/test_shard_format.py checks every n
    against the one-call deflate), and a segment costs a stream copy and at most CHECKPOINT rows
    instead of deflating all n rows: each worker meets hundreds of box positions, which took about
    0.1 s of a 1 s remask per worker."""

    CHECKPOINT = 32

    def __init__(self, width: int):
        self.row = bytes(1) + bytes([OUTSIDE]) * width
        self.stream = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY)
        self.output: list[bytes] = []
        self.checkpoints = [(self.stream.copy(), b"")]  # (stream after c * CHECKPOINT rows, its output)

    def segment(self, n: int, last: bool) -> bytes:
        c = n // self.CHECKPOINT
        while len(self.checkpoints) <= c:
            self.output.append(self.stream.compress(self.row * self.CHECKPOINT))
            self.checkpoints.append((self.stream.copy(), b"".join(self.output)))
        state, prefix = self.checkpoints[c]
        z = state.copy()
        return prefix + z.compress(self.row * (n - c * self.CHECKPOINT)) + z.flush(
            zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


@functools.lru_cache(maxsize=16)
def _constant_rows_of_width(width: int) -> _ConstantRows:
    return _ConstantRows(width)


@functools.lru_cache(maxsize=4096)
def _constant_rows(n: int, width: int, last: bool) -> tuple[bytes, int, int]:
    """(raw-deflate segment, Adler-32 from 1, raw length) of n rows of OUTSIDE with filter None."""
    if n == 0:
        return b"", 1, 0
    rows = _constant_rows_of_width(width)
    raw = rows.row * n
    return rows.segment(n, last), zlib_ng.adler32(raw), len(raw)


def _filtered_rows(region_map: np.ndarray, x0: int, width: int) -> np.ndarray:
    """PNG rows (filter byte, then `width` pixels) that are OUTSIDE but for `region_map` at columns
    x0 onwards. Filter None: deflate finds the runs and the repeated rows itself, and neither side
    pays a filtering pass (un-filtering Up rows costs more than it saves)."""
    h, w = region_map.shape
    raw = np.full((h, width + 1), OUTSIDE, np.uint8)
    raw[:, 0] = 0
    raw[:, 1 + x0:1 + x0 + w] = region_map
    return raw


def encode_level_map(level_map: np.ndarray, rows: tuple[int, int] | None = None) -> bytes:
    """The v2 `levels.png`: an 8-bit grayscale PNG of a uint8 level map, written directly (no imaging
    library; any PNG reader decodes it; the same map always gives the same bytes). `rows` = (y0, y1)
    may say which rows hold anything but OUTSIDE (the box rows; computed when not given)."""
    level_map = np.asarray(level_map)
    if level_map.ndim != 2 or level_map.dtype != np.uint8 or not level_map.size:
        raise ValueError(f"a level map is a non-empty 2-D uint8 array, got {level_map.dtype} {level_map.shape}")
    if rows is None:
        used = np.flatnonzero((level_map != OUTSIDE).any(axis=1))
        rows = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
    y0, y1 = rows
    h, w = level_map.shape
    return _encode_raw_rows(_filtered_rows(level_map[y0:y1], 0, w) if y1 > y0 else None, y0, h, w)


def encode_level_map_box(region_map: np.ndarray, box: tuple[int, int, int, int], height: int, width: int) -> bytes:
    """encode_level_map of the height x width map that is `region_map` inside `box` (x0, y0, x1, y1)
    and OUTSIDE everywhere else, without making that map (the box rows are filtered directly)."""
    x0, y0, x1, y1 = box
    if region_map.shape != (y1 - y0, x1 - x0) or not 0 <= x0 < x1 <= width or not 0 <= y0 < y1 <= height:
        raise ValueError(f"a {region_map.shape} region map does not fill box {box} of a {height}x{width} map")
    return _encode_raw_rows(_filtered_rows(region_map, x0, width), y0, height, width)


def _encode_raw_rows(raw: np.ndarray | None, y0: int, h: int, w: int) -> bytes:
    """The PNG of a map whose rows y0 : y0 + len(raw) are `raw` (filtered rows, w + 1 bytes each)."""
    y1 = y0 + (len(raw) if raw is not None else 0)
    top, top_adler, top_len = _constant_rows(y0, w, last=y1 == y0 == h)
    if raw is not None:
        box, box_adler, box_len = _deflate_box(raw.data, last=y1 == h), zlib_ng.adler32(raw.data), raw.nbytes
    else:
        box, box_adler, box_len = b"", 1, 0
    bottom, bottom_adler, bottom_len = _constant_rows(h - y1, w, last=True) if y1 < h else (b"", 1, 0)
    adler = _adler32_combine(_adler32_combine(top_adler, box_adler, box_len), bottom_adler, bottom_len)
    idat = _ZLIB_HEADER + top + box + bottom + struct.pack(">I", adler)
    layout = struct.pack(">IIII", y0, y1, len(_ZLIB_HEADER) + len(top), len(box))
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _png_chunk(_LAYOUT_CHUNK, layout) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def _chunks(data: bytes):
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4 or struct.unpack(">I", crc)[0] != _chunk_crc(kind, body):
            return
        yield kind, body
        pos += 12 + length


def decode_level_map_box_rows(data: bytes) -> tuple[np.ndarray, int, tuple[int, int]] | None:
    """(box rows, y0, (height, width)) of a PNG that encode_level_map wrote, inflating only its box
    rows (every other row is OUTSIDE; the rows are a read-only view of the inflated bytes); None for
    any other PNG or one that does not check out (decode_level_map_rows then decodes it the general
    way)."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    chunks = list(_chunks(data))
    if [k for k, _ in chunks] != [b"IHDR", _LAYOUT_CHUNK, b"IDAT", b"IEND"] or len(chunks[1][1]) != 16:
        return None
    w, h, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if (depth, color, compression, filtering, interlace) != (8, 0, 0, 0, 0) or not w or not h:
        return None
    y0, y1, offset, box_len = struct.unpack(">IIII", chunks[1][1])
    idat = chunks[2][1]
    if not y0 <= y1 <= h or not idat.startswith(_ZLIB_HEADER) or offset + box_len + 4 > len(idat):
        return None
    top, top_adler, _ = _constant_rows(y0, w, last=y1 == y0 == h)
    bottom, bottom_adler, bottom_len = _constant_rows(h - y1, w, last=True) if y1 < h else (b"", 1, 0)
    if (idat[len(_ZLIB_HEADER):offset] != top or idat[offset + box_len:-4] != bottom
            or (y1 == y0 and box_len)):
        return None
    rows = np.empty((0, w), np.uint8)
    box_adler, raw_len = 1, 0
    if y1 > y0:
        z = zlib_ng.decompressobj(-15)  # about 2x faster than ISA-L's inflate on these streams
        try:
            raw = z.decompress(idat[offset:offset + box_len])
        except zlib_ng.error:
            return None
        if len(raw) != (y1 - y0) * (w + 1) or z.unused_data or z.eof != (y1 == h):
            return None
        if raw[::w + 1].strip(b"\0"):  # every row's filter byte must be None (0)
            return None
        rows = np.frombuffer(raw, np.uint8).reshape(y1 - y0, w + 1)[:, 1:]
        box_adler, raw_len = zlib_ng.adler32(raw), len(raw)
    adler = _adler32_combine(_adler32_combine(top_adler, box_adler, raw_len), bottom_adler, bottom_len)
    if struct.pack(">I", adler) != idat[-4:]:
        return None
    return rows, y0, (h, w)


def _decode_own_layout(data: bytes) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(map, (y0, y1)) of a PNG that encode_level_map wrote (see decode_level_map_box_rows)."""
    fast = decode_level_map_box_rows(data)
    if fast is None:
        return None
    rows, y0, shape = fast
    out = np.full(shape, OUTSIDE, np.uint8)
    out[y0:y0 + len(rows)] = rows
    return out, (y0, y0 + len(rows))


def decode_level_map_rows(data: bytes) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(level map, (y0, y1) when every row outside y0:y1 is known to be OUTSIDE, else None)."""
    fast = _decode_own_layout(data) if data else None
    if fast is not None:
        return fast
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise ValueError("not a decodable PNG")
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"a level map is an 8-bit grayscale PNG, this one decodes to {arr.dtype} {arr.shape}")
    return arr, None


def decode_level_map(data: bytes) -> np.ndarray:
    """The uint8 level map of a v2 `levels.png`; ValueError when it is not an 8-bit grayscale PNG."""
    return decode_level_map_rows(data)[0]
