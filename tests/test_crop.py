import numpy as np
import pytest

from smartbrush.pipeline.imaging.window import cut_window, place
from smartbrush.pipeline.render.crop import choose_crop_window, crop_image, crop_mask


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


def test_cut_window_pads_with_zeros():
    a = np.arange(12).reshape(3, 4) + 1
    out = cut_window(a, (-1, -1, 3, 3))
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


# --- crop policies: scene (default) and object ------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402

from smartbrush.config import RenderConfig, build_config_from_dict  # noqa: E402
from smartbrush.pipeline.errors import RecordError  # noqa: E402
from smartbrush.pipeline.render.crop import (check_size_at_resolution, crop_window, object_size_at_resolution,  # noqa: E402
                                             scene_window)


def test_scene_is_the_default_policy():
    assert RenderConfig().crop_policy == "scene"
    with pytest.raises(ValueError, match="crop_policy: one of scene, object"):
        build_config_from_dict({"render": {"crop_policy": "tight"}})


@pytest.mark.parametrize("box, size, window", [
    # landscape 640x480: side 480, centred on the box horizontally, full height
    ((250, 200, 350, 250), (640, 480), (60, 0, 540, 480)),
    ((0, 100, 40, 140), (640, 480), (0, 0, 480, 480)),  # left border
    ((600, 10, 640, 60), (640, 480), (160, 0, 640, 480)),  # right border
    ((100, 0, 300, 480), (640, 480), (0, 0, 480, 480)),  # box as tall as the image: no padding
    ((251, 0, 252, 10), (641, 480), (11, 0, 491, 480)),  # centre 251.5 - 240 = 11.5, rounded down
    # portrait 480x640: side 480, centred on the box vertically, full width
    ((100, 250, 200, 350), (480, 640), (0, 60, 480, 540)),
    ((10, 0, 50, 30), (480, 640), (0, 0, 480, 480)),  # top border
    ((400, 600, 480, 640), (480, 640), (0, 160, 480, 640)),  # bottom-right corner
    ((0, 0, 500, 500), (500, 500), (0, 0, 500, 500)),  # square image: the whole image
])
def test_scene_window_is_the_largest_square_holding_the_box(box, size, window):
    assert scene_window(box, size) == window
    assert crop_window(box, size, RenderConfig()) == window
    x0, y0, x1, y1 = window
    assert x1 - x0 == y1 - y0 == min(size) and 0 <= x0 and 0 <= y0 and x1 <= size[0] and y1 <= size[1]


def test_scene_window_pads_only_a_box_longer_than_the_shorter_side():
    # a 600 px wide object in a 640x300 image: side 600, aligned with the box horizontally,
    # centred on the image vertically (150 px of padding above and below), like the object policy
    assert scene_window((20, 50, 620, 250), (640, 300)) == (20, -150, 620, 450)
    assert scene_window((20, 50, 620, 250), (640, 300)) == choose_crop_window((20, 50, 620, 250), (640, 300), 1.5, 0)
    assert scene_window((0, 0, 640, 480), (640, 480)) == (0, -80, 640, 560)
    assert scene_window((50, 0, 130, 400), (150, 400)) == (-125, 0, 275, 400)  # portrait: 125 px each side


@pytest.mark.parametrize("box", [(250, 200, 350, 250), (0, 0, 40, 40), (5, 100, 635, 110), (20, 50, 620, 250)])
def test_object_policy_unchanged(box):
    for render in (RenderConfig(crop_policy="object"), RenderConfig(crop_policy="object", context=2.0,
                                                                     min_crop_fraction=0.1)):
        assert crop_window(box, (640, 480), render) == choose_crop_window(box, (640, 480), render.context,
                                                                          render.min_crop_fraction)
    assert crop_window((250, 200, 350, 250), (640, 480), RenderConfig(crop_policy="object")) == (225, 150, 375, 300)


def _clipped_box_place(lo, hi, side, dim):
    """An independent placer for a box inside the image (the captioner's boxes are clipped to it)."""
    if side > dim:
        return (dim - side) // 2
    return min(max((lo + hi - side) // 2, 0), dim - side)


def test_one_placer_for_training_and_caption_crops():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        dim = int(rng.integers(1, 300))
        lo = int(rng.integers(0, dim))
        hi = int(rng.integers(lo + 1, dim + 1))
        side = int(rng.integers(hi - lo, 2 * dim + 2))
        assert place(lo, hi, side, dim) == _clipped_box_place(lo, hi, side, dim), (lo, hi, side, dim)


def test_too_small_at_resolution_is_filtered():
    render = RenderConfig(resolution=512)  # min_object_size_at_resolution 16
    # 15 px longest side in a 480 px window at R = 512 is 16.0 px: kept; 14 px is 14.9 px: filtered
    check_size_at_resolution((300, 200, 315, 210), (60, 0, 540, 480), render)
    assert object_size_at_resolution((300, 200, 314, 210), (60, 0, 540, 480), 512) == pytest.approx(14 * 512 / 480)
    with pytest.raises(RecordError) as e:
        check_size_at_resolution((300, 200, 314, 210), (60, 0, 540, 480), render)
    assert (e.value.reason, e.value.kind) == ("too_small_at_resolution", "filtered")
    import pickle

    assert pickle.loads(pickle.dumps(e.value)).kind == "filtered"
    check_size_at_resolution((300, 200, 301, 201), (60, 0, 540, 480), RenderConfig(min_object_size_at_resolution=0))
    from smartbrush.schemas.rejected import REASONS_FILTERED

    assert "too_small_at_resolution" in REASONS_FILTERED


def _tiny_coco(root):
    """One 400x300 image: a 120 px object and a 12 px one (kept at ingest: area 144, side 12; but
    12 x 64 / 300 = 2.6 px at R = 64 in the scene window)."""
    from PIL import Image

    from tests.corpus_factory import picture, save, square

    (root / "images").mkdir(parents=True)
    save(Image.fromarray(picture(400, 300, 7)), root / "images" / "a.jpg", quality=95)
    anns = [{"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": seg, "area": 0.0,
             "bbox": [0, 0, 0, 0]} for i, seg in ((1, square(100, 100, 120)), (2, square(300, 20, 12)))]
    (root / "instances_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 300}], "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}]}))
    return ["--coco-annotations", str(root / "instances_val.json"), "--coco-images", str(root / "images")]


@pytest.mark.slow
def test_build_counts_objects_too_small_at_resolution(tmp_path):
    from smartbrush.pipeline.commands.build import run_build
    from smartbrush.pipeline.storage.manifest import read_manifest, read_rejected

    flags = _tiny_coco(tmp_path / "in")
    out = tmp_path / "out"
    run_build(flags + ["--out", str(out), "--resolution", "64", "--direct_num_workers", "1"])
    counts = read_manifest(str(out))["counts"]
    assert (counts["inputs"], counts["written"]) == (2, 1)
    assert counts["filtered"] == {"too_small_at_resolution": 1} and not counts["rejected"]
    [row] = read_rejected(str(out))
    assert (row["record_id"], row["kind"], row["reason"], row["stage"]) == (
        "coco_val_1_2", "filtered", "too_small_at_resolution", "shard")
    assert math.isclose(12 * 64 / 300, float(row["detail"].split(" px")[0].split()[-1]), abs_tol=0.05)
