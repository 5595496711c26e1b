"""Per image: read and decode the source image once, then render every instance's sample."""

from __future__ import annotations

import hashlib

import numpy as np

from smartbrush.config import RenderConfig
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.errors import RecordError, rejection
from smartbrush.pipeline.render.images import decode_image
from smartbrush.pipeline.render.samples import render_sample
from smartbrush.schemas.mask_schedule import MaskSchedule


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


def load_image_and_hash(path: str, expected_size: tuple[int, int], render: RenderConfig) -> tuple[np.ndarray, str]:
    """Decoded RGB array in the annotation's frame and the sha256 of the file's bytes."""
    data = read_image_bytes(path)
    return decode_image(data, expected_size, render.exif, render.max_image_pixels), hashlib.sha256(data).hexdigest()


def load_image(path: str, expected_size: tuple[int, int], render: RenderConfig) -> np.ndarray:
    """Decoded RGB array in the annotation's frame; raises RecordError for a missing or bad file."""
    return load_image_and_hash(path, expected_size, render)[0]


def render_image(rows: list[dict], schedule: MaskSchedule, render: RenderConfig,
                 stage: str = "shard") -> tuple[list[tuple[str, dict]], list[dict]]:
    """(instance_id, sample) pairs and rejection rows for all instances of one source image."""
    rows = sorted(rows, key=lambda r: r["instance_id"])
    first = rows[0]
    try:
        image, sha = load_image_and_hash(first["image_path"], (first["image_width"], first["image_height"]), render)
    except RecordError as e:
        return [], [rejection(r["instance_id"], r["source"], stage, e.reason, e.detail, r["image_path"], e.kind)
                    for r in rows]
    samples, rejected = [], []
    for row in ({**r, "image_sha256": sha} for r in rows):
        try:
            samples.append((row["instance_id"], render_sample(image, row, schedule, render)))
        except RecordError as e:
            rejected.append(rejection(row["instance_id"], row["source"], stage, e.reason, e.detail, row["image_path"],
                                      e.kind))
    return samples, rejected
