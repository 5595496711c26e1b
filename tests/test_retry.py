"""Transient I/O errors are retried with backoff and, if they persist, fail the job; a missing or
undecodable file is still a rejection, at once."""

import errno
import io

import numpy as np
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from PIL import Image

from smartbrush.config import RenderConfig, load_schedule
from smartbrush.pipeline.imaging.masks import mask_to_rle, rle_area_and_box
from smartbrush.pipeline.render.per_image import render_image
from smartbrush.pipeline.storage import fileio
from smartbrush.schemas import files


class FlakyFileSystem(LocalFileSystem):
    """A filesystem wrapper: `flaky:///abs/path` is the local file /abs/path, but opening a path
    fails with a transient error the first `FAILURES[path]` times (ETIMEDOUT, then a reset)."""

    FAILURES: dict[str, int] = {}
    OPENS: dict[str, int] = {}
    ERRORS = (TimeoutError(errno.ETIMEDOUT, "timed out"), ConnectionResetError(errno.ECONNRESET, "reset by peer"))

    @classmethod
    def scheme(cls):
        return "flaky"

    def exists(self, path):
        return super().exists(path[len("flaky://"):])

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        local = path[len("flaky://"):]
        n = self.OPENS.get(local, 0)
        self.OPENS[local] = n + 1
        if n < self.FAILURES.get(local, 0):
            raise self.ERRORS[n % 2]
        return super().open(local, mime_type, compression_type)


@pytest.fixture
def no_sleep(monkeypatch):
    """Retries without waiting; returns the delays that would have been slept."""
    slept: list[float] = []
    monkeypatch.setattr(files, "RETRY", files.RetryPolicy(attempts=4, base_delay=0.5, max_delay=8.0,
                                                           sleep=slept.append))
    FlakyFileSystem.FAILURES.clear()
    FlakyFileSystem.OPENS.clear()
    return slept


def _image_and_row(tmp_path, path_prefix=""):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    file = tmp_path / "img.jpg"
    file.write_bytes(buf.getvalue())
    mask = np.zeros((90, 120), bool)
    mask[30:60, 40:90] = True
    rle = mask_to_rle(mask)
    area, box = rle_area_and_box(rle)
    row = {"instance_id": "coco_val_1_1", "source": "coco", "split": "val", "image_id": "1", "annotation_id": "1",
           "image_path": path_prefix + str(file), "image_width": 120, "image_height": 90, "category_id": 1,
           "label": "thing", "box_xyxy": list(box), "area": area, "iscrowd": False,
           "mask_rle_counts": rle["counts"], "mask_rle_size": rle["size"], "captions": []}
    return str(file), row


def _render(row):
    return render_image([row], load_schedule("smartbrush"), RenderConfig(resolution=64))


def test_transient_errors_are_classified():
    assert fileio.is_transient(TimeoutError("x")) and fileio.is_transient(ConnectionResetError())
    assert fileio.is_transient(OSError(errno.EIO, "I/O error")) and fileio.is_transient(OSError("stale"))
    assert not fileio.is_transient(FileNotFoundError(errno.ENOENT, "no"))
    assert not fileio.is_transient(PermissionError(errno.EACCES, "no"))
    assert not fileio.is_transient(IsADirectoryError(errno.EISDIR, "dir"))
    assert not fileio.is_transient(ValueError("undecodable"))
    assert not fileio.is_transient(fileio.TransientIOError("already retried"))
    ServiceUnavailable = type("ServiceUnavailable", (Exception,), {})  # an object store's 503
    assert fileio.is_transient(ServiceUnavailable("503"))


def test_retry_io_backs_off_exponentially(no_sleep):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) < 4:
            raise TimeoutError("slow")
        return "ok"

    assert fileio.retry_io(fn) == "ok"
    assert no_sleep == [0.5, 1.0, 2.0]
    assert fileio.retry_io(lambda: 7, attempts=1) == 7


def test_two_transient_failures_then_success_reads_the_image(tmp_path, no_sleep):
    local, flaky_row = _image_and_row(tmp_path, "flaky://")
    _, clean_row = _image_and_row(tmp_path)
    FlakyFileSystem.FAILURES[local] = 2
    samples, rejected = _render(flaky_row)
    assert rejected == [] and len(samples) == 1
    assert FlakyFileSystem.OPENS[local] == 3 and no_sleep == [0.5, 1.0]
    clean_samples, clean_rejected = _render(clean_row)
    assert clean_rejected == []
    flaky_sample, clean_sample = samples[0][1], clean_samples[0][1]
    assert {k: v for k, v in flaky_sample.items() if k != "json"} == {k: v for k, v in clean_sample.items() if k != "json"}
    assert flaky_sample["json"].replace(b"flaky://", b"") == clean_sample["json"]


def test_persistent_transient_failure_fails_the_job(tmp_path, no_sleep):
    local, row = _image_and_row(tmp_path, "flaky://")
    FlakyFileSystem.FAILURES[local] = 10**9
    with pytest.raises(fileio.TransientIOError, match="after 4 attempts") as info:
        _render(row)  # raises: not an image_unreadable rejection
    assert isinstance(info.value.__cause__, (TimeoutError, ConnectionResetError))
    assert FlakyFileSystem.OPENS[local] == 4 and no_sleep == [0.5, 1.0, 2.0]


def test_missing_file_is_rejected_at_once(tmp_path, no_sleep):
    _, row = _image_and_row(tmp_path, "flaky://")
    row["image_path"] = "flaky://" + str(tmp_path / "nope.jpg")
    samples, rejected = _render(row)
    assert samples == [] and [r["reason"] for r in rejected] == ["image_missing"]
    assert no_sleep == []  # no retries for a missing file


def test_undecodable_file_is_still_a_rejection(tmp_path, no_sleep):
    local, row = _image_and_row(tmp_path)
    with open(local, "wb") as f:
        f.write(b"not a jpeg at all")
    samples, rejected = _render(row)
    assert samples == [] and [r["reason"] for r in rejected] == ["image_unreadable"] and no_sleep == []


def test_openimages_mask_reads_retry(tmp_path, no_sleep):
    from smartbrush.config import FilterConfig
    from smartbrush.pipeline.sources.openimages import openimages_image_rows

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "images" / "abc.jpg")
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "abc_m01_b1.png")
    FlakyFileSystem.FAILURES[str(tmp_path / "masks" / "abc_m01_b1.png")] = 2
    FlakyFileSystem.FAILURES[str(tmp_path / "images" / "abc.jpg")] = 1
    rec = {"MaskPath": "abc_m01_b1.png", "ImageID": "abc", "LabelName": "/m/01", "BoxID": "b1"}
    rows, rejected = openimages_image_rows("abc", [rec], {"/m/01": "thing"}, f"flaky://{tmp_path}/images",
                                           f"flaky://{tmp_path}/masks", "train", FilterConfig(), "seg.csv")
    assert rejected == [] and len(rows) == 1 and rows[0]["box_xyxy"] == [20, 10, 50, 30]
    assert no_sleep == [0.5, 0.5, 1.0]

    FlakyFileSystem.FAILURES[str(tmp_path / "masks" / "abc_m01_b1.png")] = 10**9
    with pytest.raises(fileio.TransientIOError):
        openimages_image_rows("abc", [rec], {"/m/01": "thing"}, f"flaky://{tmp_path}/images",
                              f"flaky://{tmp_path}/masks", "train", FilterConfig(), "seg.csv")
