import cv2
import numpy as np
import pytest

from smartbrush.config import load_schedule
from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.render.ladder import blur_parameters, render_ladder
from smartbrush.pipeline.render.masks import mask_box
from smartbrush.schemas.mask_schedule import Level, from_dict


def shapes():
    a = np.zeros((512, 512), np.uint8)
    cv2.circle(a, (256, 256), 150, 1, -1)
    b = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(b, [np.array([[40, 60], [470, 90], [300, 480], [200, 200], [60, 400]])], 1)
    c = np.zeros((512, 512), np.uint8)
    c[250:262, 30:480] = 1  # a thin bar
    c[100:400, 240:246] = 1
    d = np.zeros((512, 512), np.uint8)
    d[500:512, 0:20] = 1  # small object in a corner
    return [m.astype(bool) for m in (a, b, c, d)]


@pytest.mark.parametrize("preset", ["smartbrush", "smartbrush-fine", "pixels", "exact-box"])
def test_ladder_nests_and_ends_with_box(preset):
    schedule = load_schedule(preset)
    for exact in shapes():
        levels = render_ladder(exact, schedule)
        assert len(levels) == schedule.num_levels
        assert np.array_equal(levels[0], exact)
        for lo, hi in zip(levels, levels[1:]):
            assert not (lo & ~hi).any()
        x0, y0, x1, y1 = mask_box(exact)
        box = np.zeros_like(exact)
        box[y0:y1, x0:x1] = True
        assert np.array_equal(levels[-1], box)


def test_blur_levels_grow():
    schedule = load_schedule("smartbrush")
    levels = render_ladder(shapes()[1], schedule)
    areas = [int(m.sum()) for m in levels]
    assert areas == sorted(areas) and len(set(areas)) == len(areas)


@pytest.mark.parametrize("preset", ["smartbrush", "smartbrush-fine", "pixels"])
def test_reduced_resolution_blur_matches_full_resolution(preset):
    # The full-resolution definition is the reference; the fast path must agree to IoU >= 0.98.
    schedule = load_schedule(preset)
    for exact in shapes():
        fast = render_ladder(exact, schedule, reduce=True)
        full = render_ladder(exact, schedule, reduce=False)
        for f, g in zip(fast[1:-1], full[1:-1]):
            iou = (f & g).sum() / (f | g).sum()
            assert iou >= 0.98, iou


def test_region_blur_equals_whole_image_blur():
    exact = shapes()[0]
    schedule = from_dict({"id": "t", "levels": [{"type": "exact"},
                                                {"type": "blur", "sigma": 3, "units": "pixels", "threshold": 0.05},
                                                {"type": "box"}]})
    level = render_ladder(exact, schedule, reduce=False)[1]
    whole = cv2.GaussianBlur(exact.astype(np.float32), (19, 19), 3, borderType=cv2.BORDER_CONSTANT) > 0.05
    x0, y0, x1, y1 = mask_box(exact)
    clipped = np.zeros_like(whole)
    clipped[y0:y1, x0:x1] = whole[y0:y1, x0:x1]
    assert np.array_equal(level, clipped | exact)


def test_blur_parameters():
    assert blur_parameters(Level("blur", sigma=0.1, units="relative", threshold=0.05), 200) == (20.0, 121)
    assert blur_parameters(Level("blur", sigma=4, kernel=24, units="pixels", threshold=0.05), 999) == (4.0, 25)


def test_empty_mask_rejected():
    with pytest.raises(RecordError) as e:
        render_ladder(np.zeros((8, 8), bool), load_schedule("smartbrush"))
    assert e.value.reason == "empty_mask"
