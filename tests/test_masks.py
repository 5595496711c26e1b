import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.imaging.masks import (mask_box, mask_to_rle, openimages_mask_to_rle, rle_area_and_box,
                                       rle_to_mask, segmentation_to_rle)


def test_square_polygon_decodes_to_exact_pixels():
    # A polygon through pixel centres 2..5 covers pycocotools' rasterisation of that square.
    rle = segmentation_to_rle([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 12)
    m = rle_to_mask(rle)
    assert m.shape == (10, 12)
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 12)))
    assert np.array_equal(m, expected)
    assert rle_area_and_box(rle) == (int(expected.sum()), mask_box(expected))
    assert isinstance(rle["counts"], str)


def test_multipart_polygon_is_union_of_parts():
    a, b = [1, 1, 4, 1, 4, 4, 1, 4], [7, 6, 10, 6, 10, 9, 7, 9]
    m = rle_to_mask(segmentation_to_rle([a, b], 12, 12))
    ma = rle_to_mask(segmentation_to_rle([a], 12, 12))
    mb = rle_to_mask(segmentation_to_rle([b], 12, 12))
    assert np.array_equal(m, ma | mb)
    assert mask_box(m) == (mask_box(ma)[0], mask_box(ma)[1], mask_box(mb)[2], mask_box(mb)[3])


def test_uncompressed_and_compressed_rle_round_trip():
    truth = np.zeros((6, 5), np.uint8)
    truth[1:4, 2:5] = 1
    flat = truth.flatten(order="F")  # COCO counts run in column-major order
    counts, run, value = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            run, value = 0, v
        run += 1
    counts.append(run)
    rle = segmentation_to_rle({"size": [6, 5], "counts": counts}, 6, 5)
    assert np.array_equal(rle_to_mask(rle), truth)
    again = segmentation_to_rle({"size": [6, 5], "counts": rle["counts"]}, 6, 5)
    assert again == rle
    assert rle_area_and_box(rle) == (9, (2, 1, 5, 4))


@pytest.mark.parametrize("seg,reason", [
    ([[1, 1, 5, 5]], "invalid_polygon"),  # two points
    ([[1, 1, 5, 5, 9, 9]], "invalid_polygon"),  # collinear: zero area
    ([[1, 1, 5, 1, 5]], "invalid_polygon"),  # odd number of coordinates
    ([[1, 1, "x", 1, 5, 5]], "invalid_polygon"),
    ([], "invalid_polygon"),
    ({"size": [7, 5], "counts": [35]}, "rle_size_mismatch"),
    ({"size": [6, 5], "counts": [10, 3]}, "invalid_rle"),  # does not sum to 30
    ({"size": [6, 5]}, "invalid_rle"),
    ("not a segmentation", "invalid_annotation"),
])
def test_bad_segmentations_raise_with_reason(seg, reason):
    with pytest.raises(RecordError) as e:
        segmentation_to_rle(seg, 6, 5)
    assert e.value.reason == reason


def test_openimages_mask_resized_to_image():
    small = np.zeros((48, 64), bool)
    small[12:36, 16:48] = True
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, format="PNG")
    rle = openimages_mask_to_rle(buf.getvalue(), 128, 96)
    m = rle_to_mask(rle)
    assert m.shape == (96, 128)
    assert mask_box(m) == (32, 24, 96, 72)
    assert m.sum() == 64 * 48


def test_openimages_mask_errors():
    with pytest.raises(RecordError) as e:
        openimages_mask_to_rle(b"not a png", 10, 10)
    assert e.value.reason == "mask_unreadable"
    buf = io.BytesIO()
    Image.fromarray(np.ones((10, 40), bool)).save(buf, format="PNG")
    with pytest.raises(RecordError) as e:
        openimages_mask_to_rle(buf.getvalue(), 20, 20)
    assert e.value.reason == "mask_size_mismatch"


def test_mask_box_and_rle_helpers():
    m = np.zeros((5, 7), bool)
    assert mask_box(m) == (0, 0, 0, 0)
    m[4, 6] = True
    assert mask_box(m) == (6, 4, 7, 5)
    assert rle_area_and_box(mask_to_rle(m)) == (1, (6, 4, 7, 5))
