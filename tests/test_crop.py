import numpy as np
import pytest

from smartbrush.pipeline.render.crop import choose_crop_window, crop_image, crop_mask, extract_window


def test_window_centred_on_box_with_context():
    # box 100x50 at the image centre; side = 1.5 * 100 = 150
    assert choose_crop_window((250, 200, 350, 250), (640, 480), context=1.5, min_crop_fraction=0) == (225, 150, 375, 300)


def test_window_shifted_inside_at_borders():
    assert choose_crop_window((0, 0, 40, 40), (640, 480), 1.5, 0) == (0, 0, 60, 60)
    assert choose_crop_window((600, 440, 640, 480), (640, 480), 1.5, 0) == (580, 420, 640, 480)


def test_min_crop_fraction_for_tiny_objects():
    # a 4 px object gets at least a quarter of the shorter side (120 px)
    w = choose_crop_window((318, 238, 322, 242), (640, 480), 1.5, 0.25)
    assert w == (260, 180, 380, 300)


def test_window_capped_at_shorter_side_but_contains_box():
    # a box 400 px tall in a 480 px tall image: 1.5 * 400 = 600 is capped to 480
    assert choose_crop_window((100, 40, 300, 440), (640, 480), 1.5, 0) == (0, 0, 480, 480)


def test_object_longer_than_shorter_side_pads_symmetrically():
    # a 600 px wide object in a 640x300 image: the window must be 600 wide, so it extends past the
    # top and bottom by 150 px each
    x0, y0, x1, y1 = choose_crop_window((20, 50, 620, 250), (640, 300), 1.5, 0)
    assert (x1 - x0, y1 - y0) == (600, 600)
    assert (x0, x1) == (20, 620)
    assert (y0, y1) == (-150, 450)


@pytest.mark.parametrize("box", [(0, 0, 1, 1), (639, 479, 640, 480), (0, 0, 640, 480), (5, 100, 635, 110)])
def test_window_is_square_and_contains_box(box):
    x0, y0, x1, y1 = choose_crop_window(box, (640, 480))
    assert x1 - x0 == y1 - y0
    assert x0 <= box[0] and y0 <= box[1] and x1 >= box[2] and y1 >= box[3]


def test_extract_window_pads_with_zeros():
    a = np.arange(12).reshape(3, 4) + 1
    out = extract_window(a, (-1, -1, 3, 3))
    assert out.tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]


def test_crop_image_and_mask_align():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255
    mask = np.zeros((100, 200), np.uint8)
    mask[40:60, 90:110] = 1
    window = (75, 25, 125, 75)  # 50 px -> 100 px: exact 2x upscale
    img = crop_image(image, window, 100)
    m = crop_mask(mask, window, 100)
    assert m.shape == (100, 100) and m.dtype == bool
    assert m[30:70, 30:70].all() and m.sum() == 40 * 40
    assert img[35:65, 35:65].min() == 255 and img[:25].max() == 0
