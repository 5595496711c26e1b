"""train/data.py: both sample kinds through one interface."""

from __future__ import annotations

import io
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from smartbrush.config import RenderConfig, load_schedule
from smartbrush.pipeline.commands import laion
from smartbrush.pipeline.imaging.masks import mask_box, mask_to_rle
from smartbrush.schemas.shard_sample import decode_jpeg, sample_masks
from smartbrush.pipeline.render.samples import encode_jpeg, render_sample
from smartbrush.pipeline.storage.shards import write_shard
from smartbrush.schemas.shard_set import iter_shard
from smartbrush.train.data import INPAINTING, TEXT_TO_IMAGE, fit, sample_task, training_sample

R = 64


def _image(h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 40 * seed)], -1)
    return np.clip(rgb + np.random.default_rng(seed).integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)


def _instance(i: int) -> tuple[np.ndarray, dict]:
    image = _image(120, 160, i)
    mask = np.zeros((120, 160), np.uint8)
    cv2.ellipse(mask, (70 + 10 * i, 60), (30, 18 + 4 * i), 20 * i, 0, 360, 1, -1)
    x0, y0, x1, y1 = mask_box(mask > 0)
    rle = mask_to_rle(mask > 0)
    captions = [{"text": f"a red ball {i}", "model": "label", "revision": "", "settings": ""},
                {"text": f"a shiny red ball number {i}", "model": "blip", "revision": "r", "settings": "{}"}]
    row = {"instance_id": f"test_val_{i}_{i + 10}", "source": "test", "split": "val", "image_id": str(i),
           "annotation_id": str(i + 10), "image_path": f"/x/{i}.jpg", "image_width": 160, "image_height": 120,
           "category_id": "1", "label": "ball", "box_xyxy": [x0, y0, x1, y1], "area": int(mask.sum()),
           "iscrowd": False, "mask_rle_counts": rle["counts"], "mask_rle_size": rle["size"], "captions": captions}
    return image, row


@pytest.fixture(scope="module")
def inpainting_shard(tmp_path_factory):
    schedule = load_schedule("smartbrush")
    samples = []
    for i in range(3):
        image, row = _instance(i)
        samples.append((row["instance_id"], render_sample(image, row, schedule, RenderConfig(resolution=R))))
    out = tmp_path_factory.mktemp("inpainting")
    write_shard(str(out), "inpainting-000000.tar", samples)
    return str(out / "inpainting-000000.tar"), dict(samples)


def _t2i_raw(key: str, h: int, w: int, caption: str, with_json: bool = True) -> dict:
    raw = {"__key__": key, "jpg": encode_jpeg(_image(h, w, 1), 95), "txt": caption.encode()}
    if with_json:  # as img2dataset writes it: no "task"
        raw["json"] = json.dumps({"caption": caption, "url": "http://x", "key": key, "status": "success"}).encode()
    return raw


def test_inpainting_sample_every_level(inpainting_shard):
    _, samples = inpainting_shard
    key = "test_val_1_11"
    raw = {"__key__": key, **samples[key]}
    expected = sample_masks(raw)
    assert sample_task(raw) == INPAINTING and len(expected) == 5
    previous = None
    for s in range(5):
        out = training_sample(raw, level=s, rng=random.Random(0))
        assert (out["level"], out["num_levels"], out["task"], out["key"]) == (s, 5, INPAINTING, key)
        assert out["image"].dtype == np.uint8 and out["image"].shape == (R, R, 3)
        assert np.array_equal(out["image"], decode_jpeg(raw["jpg"]))
        assert out["mask"].dtype == bool and np.array_equal(out["mask"], expected[s])
        if previous is not None:
            assert not (previous & ~out["mask"]).any()  # nested: s-1 inside s
        previous = out["mask"]
    x0, y0, x1, y1 = mask_box(expected[0])
    box = np.zeros((R, R), bool)
    box[y0:y1, x0:x1] = True
    assert np.array_equal(previous, box)  # s = S is the box of the exact mask
    assert out["text"] in ("a red ball 1", "a shiny red ball number 1")
    with pytest.raises(ValueError, match="level 5 outside 0..4"):
        training_sample(raw, level=5)


def test_random_level_and_caption_are_seeded(inpainting_shard):
    _, samples = inpainting_shard
    raw = {"__key__": "test_val_0_10", **samples["test_val_0_10"]}
    draws = [training_sample(raw, rng=random.Random(7)) for _ in range(2)]
    assert draws[0]["level"] == draws[1]["level"] and draws[0]["text"] == draws[1]["text"]
    rng = random.Random(3)
    outs = [training_sample(raw, rng=rng) for _ in range(200)]
    assert {o["level"] for o in outs} == {0, 1, 2, 3, 4}
    assert {o["text"] for o in outs} == {"a red ball 0", "a shiny red ball number 0"}


def test_text_to_image_sample_is_whole_image_at_the_box_level():
    out = training_sample(_t2i_raw("000000001", R, R, "a dog on a beach"))
    assert (out["task"], out["level"], out["num_levels"], out["text"], out["key"]) == (
        TEXT_TO_IMAGE, 4, 5, "a dog on a beach", "000000001")
    assert out["mask"].shape == (R, R) and out["mask"].all() and out["image"].shape == (R, R, 3)
    assert training_sample(_t2i_raw("k", R, R, "x", with_json=False), num_levels=3)["level"] == 2
    tagged = _t2i_raw("k", R, R, "x")
    tagged["json"] = json.dumps({"task": "text_to_image"}).encode()
    assert sample_task(tagged) == TEXT_TO_IMAGE
    tagged["json"] = json.dumps({"task": "segmentation"}).encode()
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        sample_task(tagged)


def test_fit_centre_crops_to_the_resolution():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a bright centre band survives the centre crop
    mask = np.zeros((40, 80), bool)
    mask[:, 40:] = True
    img, m = fit(image, mask, 20)
    assert img.shape == (20, 20, 3) and m.shape == (20, 20)
    assert img[:, 5:15].min() == 255 and img[:, :4].max() == 0 and img[:, 16:].max() == 0
    assert m[:, 10:].all() and not m[:, :10].any()
    out = training_sample(_t2i_raw("k", 48, 96, "x"), resolution=32)
    assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32) and out["mask"].all()


def test_an_inpainting_shard_reads_through_training_sample(inpainting_shard):
    path, samples = inpainting_shard
    outs = [training_sample(raw, level=0) for raw in iter_shard(path)]
    assert [o["key"] for o in outs] == sorted(samples)
    for o in outs:
        assert np.array_equal(o["mask"], sample_masks({"__key__": o["key"], **samples[o["key"]]})[0])


# ---------------------------------------------------------------- with real `smartbrush laion` shards


class _Images(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        i = int(self.path.strip("/").split(".")[0])
        buf = io.BytesIO()
        Image.fromarray(_image(90 + 10 * i, 120, i)).save(buf, format="JPEG", quality=90)
        body = buf.getvalue()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default 5 can refuse concurrent downloads


@pytest.fixture(scope="module")
def laion_shards(tmp_path_factory):
    httpd = _Server(("127.0.0.1", 0), _Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    tmp = tmp_path_factory.mktemp("laion")
    captions = [f"caption {i}: a field of flowers" for i in range(5)]
    pq.write_table(pa.table({
        "URL": [f"http://127.0.0.1:{httpd.server_address[1]}/{i}.jpg" for i in range(5)], "TEXT": captions,
        "WIDTH": [800] * 5, "HEIGHT": [600] * 5, "similarity": [0.3] * 5, "punsafe": [0.0] * 5,
        "pwatermark": [0.0] * 5, "aesthetic": [6.5] * 5, "hash": list(range(5))}), tmp / "in.parquet")
    manifest = laion.run(["--parquet", str(tmp / "in.parquet"), "--out", str(tmp / "out"), "--resolution", str(R),
                          "--samples-per-shard", "3", "--processes", "1", "--threads", "4", "--retries", "0"])
    httpd.shutdown()
    httpd.server_close()
    assert manifest["counts"]["written"] == 5
    return [str(tmp / "out" / s["name"]) for s in manifest["shards"]], captions


@pytest.mark.slow
def test_laion_shards_read_through_training_sample(laion_shards):
    urls, captions = laion_shards
    outs = [training_sample(raw) for url in urls for raw in iter_shard(url)]
    assert sorted(o["text"] for o in outs) == sorted(captions)
    for o in outs:
        assert (o["task"], o["level"], o["num_levels"]) == (TEXT_TO_IMAGE, 4, 5)
        assert o["image"].shape == (R, R, 3) and o["mask"].shape == (R, R) and o["mask"].all()
