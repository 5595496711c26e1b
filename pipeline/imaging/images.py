"""Source images: reading and decoding to RGB uint8 in the annotation's frame, with the checks a
corpus build needs (missing, unreadable, too large, size mismatch: RecordError reasons)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.storage import fileio
from smartbrush.schemas.files import digest_bytes

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageHeader:
    width: int  # of the stored pixels, before any EXIF rotation
    height: int
    orientation: int  # EXIF orientation tag, 1 when absent
    mode: str

    def size_for(self, apply_exif: bool) -> tuple[int, int]:
        if apply_exif and self.orientation in _SWAPS_AXES:
            return self.height, self.width
        return self.width, self.height


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF is treated as absent
        return 1
    return value if 1 <= value <= 8 else 1


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise RecordError("image_too_large", str(e)) from None
    except Exception as e:
        raise RecordError("image_unreadable", f"{type(e).__name__}: {e}") from None


def read_header(data: bytes) -> ImageHeader:
    with _open(data) as im:
        return ImageHeader(im.width, im.height, _orientation(im), im.mode)


HEADER_PREFIX = 1 << 16


def read_file_header(path: str, prefix: int = HEADER_PREFIX) -> ImageHeader:
    """The header of an image file from its first `prefix` bytes (size, EXIF orientation and mode
    sit at the start); the whole file only when the prefix does not hold them."""
    with fileio.open_read(path) as f:
        head = f.read(prefix)
    if len(head) == prefix:
        try:
            return read_header(head)
        except RecordError:
            pass
    return read_header(head if len(head) < prefix else fileio.read_bytes(path))


def choose_frame(header: ImageHeader, expected: tuple[int, int] | None, policy: str) -> bool:
    """Whether to apply the EXIF orientation so that pixels line up with the annotation.

    `auto` applies it unless the annotation's (width, height) only matches the stored frame; a size
    that matches neither frame is rejected as image_size_mismatch.
    """
    applied, stored = header.size_for(True), header.size_for(False)
    if policy == "apply":
        apply = True
    elif policy == "ignore":
        apply = False
    else:
        apply = not (expected is not None and expected != applied and expected == stored)
    if expected is not None and header.size_for(apply) != tuple(expected):
        w, h = header.size_for(apply)
        raise RecordError("image_size_mismatch", f"image is {w}x{h}, annotation says {expected[0]}x{expected[1]}")
    return apply


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.uint32)
        gray = (arr >> 8).astype(np.uint8) if arr.max(initial=0) > 255 else arr.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def decode_image(data: bytes, expected_size: tuple[int, int] | None = None, exif: str = "auto",
                 max_pixels: int = 100_000_000) -> np.ndarray:
    """Decode to an HxWx3 RGB uint8 array in the annotation's frame; raise RecordError otherwise.

    Grayscale, palette, CMYK and 16-bit images are converted; truncated files are rejected rather
    than padded with grey as some decoders do.
    """
    im = _open(data)
    with im:
        if im.width * im.height > max_pixels:
            raise RecordError("image_too_large", f"{im.width}x{im.height} exceeds {max_pixels} pixels")
        header = ImageHeader(im.width, im.height, _orientation(im), im.mode)
        apply = choose_frame(header, expected_size, exif)
        try:
            im.load()
        except Exception as e:
            raise RecordError("image_unreadable", f"{type(e).__name__}: {e}") from None
        if apply and header.orientation != 1:
            im = ImageOps.exif_transpose(im)
        return _to_rgb(im)


def read_image_bytes(path: str) -> bytes:
    """A source image file's bytes; raises RecordError for a missing or unreadable file."""
    try:
        return fileio.read_bytes(path)
    except FileNotFoundError:
        raise RecordError("image_missing", path) from None
    except fileio.TransientIOError:
        raise  # retried and still failing: fail the job (a re-run resumes), never a rejection
    except OSError as e:
        if not fileio.exists(path):
            raise RecordError("image_missing", path) from None
        raise RecordError("image_unreadable", f"{type(e).__name__}: {e}") from None


def load_image_and_hash(path: str, expected_size: tuple[int, int], render) -> tuple[np.ndarray, str]:
    """Decoded RGB array in the annotation's frame and the sha256 of the file's bytes; `render` is a
    RenderConfig (exif policy, max_image_pixels)."""
    data = read_image_bytes(path)
    return decode_image(data, expected_size, render.exif, render.max_image_pixels), digest_bytes(data).sha256
