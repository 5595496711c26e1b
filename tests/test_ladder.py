import json
import os
import pathlib

import cv2
import numpy as np
import pytest

from smartbrush.config import RenderConfig, load_schedule
from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.render.crop import choose_crop_window, crop_mask
from smartbrush.pipeline.imaging.images import read_header
from smartbrush.pipeline.render import ladder
from smartbrush.pipeline.render.ladder import (_Pyramid, _ladder_plan, blur_parameters, certain_rows, reference_ladder,
                                               render_ladder, render_level_map, render_region_map)
from smartbrush.pipeline.imaging.masks import (mask_box, openimages_mask_to_rle, rle_area_and_box, rle_to_mask,
                                              segmentation_to_rle)
from smartbrush.schemas.level_map import levels_from_map, map_from_levels
from smartbrush.schemas.mask_schedule import Level, from_dict
from tests.conftest import shared_path


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


def test_pyramid_levels_are_pyrdown_of_the_zero_padded_region():
    # Each level is pyrDown written in place into a zero array: the same values as pyrDown of the
    # previous level padded with zeros, and zero around the footprint (what the upsampling reads).
    region = np.random.default_rng(0).random((37, 52)) > 0.4
    pyramid = _Pyramid(region, 3)
    r = _Pyramid.RING
    expected = cv2.copyMakeBorder(region.astype(np.float32), r, r, r, r, cv2.BORDER_CONSTANT, value=0)
    assert np.array_equal(pyramid.levels[0], expected) and np.array_equal(pyramid.region(), region)
    for level in pyramid.levels[1:]:
        down = cv2.pyrDown(expected)
        expected = cv2.copyMakeBorder(down, r // 2, r // 2, r // 2, r // 2, cv2.BORDER_CONSTANT, value=0)
        assert down.any() and np.array_equal(level, expected)


def _large_regions():
    """Tight-box regions of ROWS_MIN_AREA pixels or more: the shapes above and an annulus."""
    ring = np.zeros((512, 512), np.uint8)
    cv2.circle(ring, (250, 260), 200, 1, 40)
    for mask in [*shapes(), ring.astype(bool)]:
        x0, y0, x1, y1 = mask_box(mask)
        if (x1 - x0) * (y1 - y0) >= ladder.ROWS_MIN_AREA:
            yield mask[y0:y1, x0:x1]


@pytest.mark.parametrize("preset", ["smartbrush", "smartbrush-fine", "pixels"])
def test_certain_rows_are_inside_in_the_whole_pyrup(preset):
    # The rows decided without the last pyrUp are above the threshold at every pixel of it, and
    # the wide blurs of a large box do have such rows (the shortcut is taken).
    schedule = load_schedule(preset)
    decided = 0
    for region in _large_regions():
        h, w = region.shape
        depth, steps, _ = _ladder_plan(schedule, max(h, w), ())
        pyramid = _Pyramid(region, depth)
        for _, _, threshold, levels_down, kernel in steps:
            if not levels_down:
                continue
            half = pyramid.half(levels_down, kernel)
            field = cv2.pyrUp(half)[4:4 + h, 4:4 + w]
            for a, b in certain_rows(half, h, w, threshold):
                assert b - a >= 2 * ladder.CERTAIN_RUN or b == h
                assert field[a:b].min() > threshold
                decided += b - a
    assert decided > 0


@pytest.mark.parametrize("preset", ["smartbrush", "smartbrush-fine", "pixels"])
def test_rows_decided_early_give_the_map_of_whole_pyrups(preset, monkeypatch):
    schedule = load_schedule(preset)
    regions = list(_large_regions())
    fast = [render_region_map(r, schedule) for r in regions]
    monkeypatch.setattr(ladder, "ROWS_MIN_AREA", 10 ** 12)  # every level through one whole pyrUp
    for region, got in zip(regions, fast):
        assert np.array_equal(got, render_region_map(region, schedule))


def test_blur_parameters():
    assert blur_parameters(Level("blur", sigma=0.1, units="relative", threshold=0.05), 200) == (20.0, 121)
    assert blur_parameters(Level("blur", sigma=4, kernel=24, units="pixels", threshold=0.05), 999) == (4.0, 25)


def test_empty_mask_rejected():
    with pytest.raises(RecordError) as e:
        render_ladder(np.zeros((8, 8), bool), load_schedule("smartbrush"))
    assert e.value.reason == "empty_mask"


# ---- the fast ladder against the full-resolution definition, on real masks ------------------------

SAMPLE_DATA = pathlib.Path(__file__).resolve().parents[1] / "sample_data"
BLUR_PRESETS = ["smartbrush", "smartbrush-fine", "pixels"]


def _crop(rle: dict, box, image_size, render: RenderConfig) -> np.ndarray:
    """The exact mask at crop resolution, as render_sample makes it."""
    window = choose_crop_window(box, image_size, render.context, render.min_crop_fraction)
    return crop_mask(rle_to_mask(rle), window, render.resolution)


def coco_crops(annotations: pathlib.Path, render: RenderConfig = RenderConfig()):
    """(annotation id, exact crop mask) for every annotation of a COCO file with a non-empty mask:
    every instance a build could write (filters only remove some)."""
    coco = json.loads(annotations.read_text())
    images = {im["id"]: im for im in coco["images"]}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        try:
            rle = segmentation_to_rle(ann["segmentation"], im["height"], im["width"])
        except RecordError:
            continue
        area, box = rle_area_and_box(rle)
        if area:
            yield f"coco {ann['id']}", _crop(rle, box, (im["width"], im["height"]), render)


def openimages_crops(root: pathlib.Path, render: RenderConfig = RenderConfig()):
    for name in sorted(os.listdir(root / "masks")):
        header = read_header((root / "images" / f"{name.split('_')[0]}.jpg").read_bytes())
        width, height = header.size_for(True)
        rle = openimages_mask_to_rle((root / "masks" / name).read_bytes(), width, height)
        area, box = rle_area_and_box(rle)
        if area:
            yield f"openimages {name}", _crop(rle, box, (width, height), render)


def assert_fast_ladder_matches_definition(crops, min_count: int) -> None:
    """Per level IoU >= 0.98 between render_level_map (what shards hold) and the full-resolution
    definition, on every mask, for every preset with blur levels; levels 0 and S are exact."""
    schedules = [load_schedule(p) for p in BLUR_PRESETS]
    n, worst = 0, 1.0
    for name, exact in crops:
        if not exact.any():
            continue  # too small to survive the crop: render_sample rejects it (empty_mask)
        n += 1
        for schedule in schedules:
            fast = levels_from_map(render_level_map(exact, schedule), schedule.num_levels)
            reference = reference_ladder(exact, schedule)
            assert np.array_equal(fast[0], reference[0]) and np.array_equal(fast[-1], reference[-1])
            for s, (f, r) in enumerate(zip(fast[1:-1], reference[1:-1]), start=1):
                iou = (f & r).sum() / (f | r).sum()
                worst = min(worst, iou)
                assert iou >= 0.98, f"{name}: {schedule.id} level {s}: IoU {iou:.4f}"
    assert n >= min_count, n
    print(f"{n} masks, worst IoU {worst:.4f}")


def test_fast_ladder_matches_definition_on_embedded_sample_data():
    crops = list(coco_crops(SAMPLE_DATA / "instances_sample.json")) + list(openimages_crops(SAMPLE_DATA / "openimages"))
    assert_fast_ladder_matches_definition(crops, min_count=20)


@pytest.mark.slow
def test_fast_ladder_matches_definition_on_coco_val2017_tiny():
    tiny = shared_path("coco_val2017_tiny")
    assert_fast_ladder_matches_definition(coco_crops(tiny / "annotations" / "instances_val2017.json"), min_count=700)


def test_level_map_of_a_ladder_round_trips():
    schedule = load_schedule("smartbrush-fine")
    for exact in shapes():
        level_map = render_level_map(exact, schedule)
        assert level_map.dtype == np.uint8 and set(np.unique(level_map)) <= set(range(7)) | {255}
        levels = levels_from_map(level_map, 7)
        assert np.array_equal(map_from_levels(levels), level_map)
        assert np.array_equal(levels, render_ladder(exact, schedule))


def test_too_many_levels_for_a_level_map():
    blur = {"type": "blur", "sigma": 0.01, "units": "relative", "threshold": 0.05}
    schedule = from_dict({"id": "t", "levels": [{"type": "exact"}] + [blur] * 254 + [{"type": "box"}]})
    with pytest.raises(ValueError, match="at most 255"):
        render_level_map(shapes()[0], schedule)
