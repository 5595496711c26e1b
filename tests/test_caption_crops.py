"""The captioner's crop policy on hand-made boxes and images, with exact expected windows and pixels."""

import numpy as np
import pytest
from PIL import Image

from smartbrush.pipeline.caption.crops import CropPolicy, caption_crop, caption_window, clip_box, image_crops
from smartbrush.pipeline.imaging.window import cut_window
from smartbrush.pipeline.errors import RecordError

P = CropPolicy(margin=0.1, min_side=64)


@pytest.mark.parametrize("box, size, window", [
    ((100, 100, 200, 150), (640, 480), (90, 65, 210, 185)),  # side 100 x 1.2, centred on the box
    ((0, 0, 50, 30), (640, 480), (0, 0, 64, 64)),  # top-left border: moved inside, min side
    ((600, 450, 640, 480), (640, 480), (576, 416, 640, 480)),  # bottom-right border
    ((10, 10, 12, 11), (640, 480), (0, 0, 64, 64)),  # tiny object at a corner
    ((300, 200, 302, 201), (640, 480), (269, 168, 333, 232)),  # tiny object in the middle: 64 px of context
    ((5, 5, 10, 10), (20, 30), (0, 0, 20, 20)),  # image smaller than min_side: capped at its shorter side
    ((400, 0, 640, 470), (640, 480), (160, 0, 640, 480)),  # margin capped at the image, no padding
    ((-50, -20, 700, 300), (640, 480), (0, -80, 640, 560)),  # box larger than the image: clipped, then padded
    ((0, 10, 100, 40), (100, 50), (0, -25, 100, 75)),  # object longer than the image's shorter side
])
def test_caption_window(box, size, window):
    assert caption_window(box, size, P) == window
    x0, y0, x1, y1 = window
    assert x1 - x0 == y1 - y0
    cx0, cy0, cx1, cy1 = clip_box(box, size)
    assert x0 <= cx0 and y0 <= cy0 and x1 >= cx1 and y1 >= cy1


def test_margin_and_min_side_are_policy():
    assert caption_window((100, 100, 200, 150), (640, 480), CropPolicy(margin=0.0, min_side=16)) == (100, 75, 200, 175)
    assert caption_window((100, 100, 110, 110), (640, 480), CropPolicy(margin=0.0, min_side=16)) == (97, 97, 113, 113)


@pytest.mark.parametrize("box", [(700, 10, 720, 20), (-30, -30, -10, -10), (10, 10, 10, 20), (10, 20, 30, 20),
                                 (640, 0, 650, 10), (float("nan"), 0, 10, 10), (1, 2, 3)])
def test_boxes_without_pixels_in_the_image_fail(box):
    with pytest.raises(RecordError) as e:
        caption_window(box, (640, 480), P)
    assert e.value.reason == "crop_failed"


def test_fractional_box_rounds_outwards():
    assert clip_box((10.4, 10.6, 20.2, 20.0), (640, 480)) == (10, 10, 21, 20)
    assert clip_box((639.5, 0, 641, 3), (640, 480)) == (639, 0, 640, 3)


def test_cut_window_pads_with_fill():
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert cut_window(a, (1, 1, 3, 3), 99).tolist() == [[5, 6], [9, 10]]
    assert cut_window(a, (-1, -1, 2, 2), 99).tolist() == [[99, 99, 99], [99, 0, 1], [99, 4, 5]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    out = cut_window(rgb, (1, 0, 3, 2), np.array([1, 2, 3], np.uint8))
    assert out[:, 1].tolist() == [[1, 2, 3], [1, 2, 3]] and out[:, 0].tolist() == [[0, 0, 0], [0, 0, 0]]


def _image(w=100, h=50):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)


def test_caption_crop_exact_pixels_padding_and_grey_background():
    img = _image()
    fill = (7, 8, 9)
    # Box (0, 10, 100, 40) -> window (0, -25, 100, 75): 25 padded rows above and below, no resize.
    crop = caption_crop(img, (0, 10, 100, 40), P, (100, 100), fill=fill)
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop[25:75], img)
    assert (crop[:25] == fill).all() and (crop[75:] == fill).all()
    mask = np.zeros((50, 100), np.uint8)
    mask[10:40, 20:60] = 1
    grey = caption_crop(img, (0, 10, 100, 40), CropPolicy(0.1, 64, grey_background=True), (100, 100), mask, fill)
    inside = np.zeros((100, 100), bool)
    inside[35:65, 20:60] = True
    assert np.array_equal(grey[inside], crop[inside])
    assert (grey[~inside] == fill).all()


def test_caption_crop_resizes_like_pil_bicubic():
    img = _image()
    crop = caption_crop(img, (40, 10, 60, 30), P, (32, 32))
    window = caption_window((40, 10, 60, 30), (100, 50), P)
    assert window == (25, 0, 75, 50)
    expected = np.asarray(Image.fromarray(np.ascontiguousarray(img[0:50, 25:75])).resize((32, 32), resample=3))
    assert np.array_equal(crop, expected)


def test_grey_background_needs_the_mask():
    with pytest.raises(RecordError, match="crop_failed"):
        caption_crop(_image(), (0, 0, 10, 10), CropPolicy(grey_background=True), (32, 32))


def _row(iid, path, box, w=100, h=50):
    return {"instance_id": iid, "source": "coco", "image_path": path, "image_width": w, "image_height": h,
            "box_xyxy": list(box)}


def test_image_crops_decodes_once_and_rejects_per_row(tmp_path):
    path = str(tmp_path / "img.png")
    Image.fromarray(_image()).save(path)
    rows = [_row("b", path, (40, 10, 60, 30)), _row("a", path, (200, 200, 210, 210))]
    crops, kept, rejected = image_crops(rows, lambda image, row: caption_crop(image, row["box_xyxy"], P, (32, 32)))
    assert [iid for iid, _ in crops] == ["b"] and [r["instance_id"] for r in kept] == ["b"]
    assert np.array_equal(crops[0][1], caption_crop(_image(), (40, 10, 60, 30), P, (32, 32)))
    assert [(r["record_id"], r["stage"], r["reason"]) for r in rejected] == [("a", "caption", "crop_failed")]

    missing = [_row("x", str(tmp_path / "nope.png"), (0, 0, 5, 5)), _row("y", str(tmp_path / "nope.png"), (1, 1, 5, 5))]
    crops, kept, rejected = image_crops(missing, lambda image, row: image)
    assert crops == [] and kept == [] and [r["reason"] for r in rejected] == ["image_missing", "image_missing"]

    wrong_size = [_row("z", path, (0, 0, 5, 5), w=60, h=50)]
    _, _, rejected = image_crops(wrong_size, lambda image, row: image)
    assert [r["reason"] for r in rejected] == ["image_size_mismatch"]
