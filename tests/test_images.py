import io

import numpy as np
import pytest
from PIL import Image

from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.imaging.images import decode_image, read_header


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w=64, h=48) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return np.stack([x, y, 255 - x], axis=2)


def test_rgb_png_decodes_exactly():
    arr = gradient()
    out = decode_image(encode(Image.fromarray(arr), "PNG"), (64, 48))
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_grayscale_becomes_three_equal_channels():
    gray = gradient()[:, :, 0]
    out = decode_image(encode(Image.fromarray(gray, "L"), "PNG"), (64, 48))
    assert out.shape == (48, 64, 3) and np.array_equal(out[:, :, 1], gray) and np.array_equal(out[:, :, 2], gray)


def test_sixteen_bit_scaled_to_eight():
    arr16 = (gradient()[:, :, 0].astype(np.uint16) * 257)
    out = decode_image(encode(Image.fromarray(arr16), "PNG"), (64, 48))
    assert np.array_equal(out[:, :, 0], gradient()[:, :, 0])


def test_cmyk_jpeg_converted_to_rgb():
    rgb = Image.fromarray(np.full((48, 64, 3), (200, 30, 30), np.uint8))
    out = decode_image(encode(rgb.convert("CMYK"), "JPEG", quality=95), (64, 48))
    assert out.shape == (48, 64, 3)
    assert np.abs(out.reshape(-1, 3).mean(0) - (200, 30, 30)).max() < 12


def exif_rotated(orientation: int) -> bytes:
    arr = gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def test_exif_rotation_applied_when_annotation_is_in_the_displayed_frame():
    data = exif_rotated(6)  # displayed rotated by 90 degrees: 48 x 64
    assert read_header(data).orientation == 6
    out = decode_image(data, (48, 64))
    assert out.shape == (64, 48, 3)


def test_exif_rotation_ignored_when_annotation_is_in_the_stored_frame():
    out = decode_image(exif_rotated(6), (64, 48))
    assert out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - gradient(64, 48)).mean() < 3


def test_size_mismatch_rejected():
    with pytest.raises(RecordError) as e:
        decode_image(encode(Image.fromarray(gradient()), "PNG"), (100, 100))
    assert e.value.reason == "image_size_mismatch"


def test_truncated_and_garbage_rejected():
    data = encode(Image.fromarray(gradient(256, 256)), "JPEG")
    with pytest.raises(RecordError) as e:
        decode_image(data[: len(data) // 2], (256, 256))
    assert e.value.reason == "image_unreadable"
    with pytest.raises(RecordError) as e:
        decode_image(b"<html>not an image</html>", None)
    assert e.value.reason == "image_unreadable"


def test_pixel_limit_rejects_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(RecordError) as e:
        decode_image(data, (3000, 3000), max_pixels=1_000_000)
    assert e.value.reason == "image_too_large"
