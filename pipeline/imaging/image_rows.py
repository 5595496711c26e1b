"""The instance rows of one source image: the image is read and decoded once, then each row is
handled on its own, a RecordError rejecting that row only (and every row when the image itself
cannot be loaded). Rendering, captioning and the shard writer all go through here."""

from __future__ import annotations

from typing import Callable, NamedTuple, TypeVar

import numpy as np

from smartbrush.pipeline.errors import RecordError, rejection
from smartbrush.pipeline.imaging.images import load_image_and_hash

T = TypeVar("T")


class DecodedImage(NamedTuple):
    pixels: np.ndarray  # HxWx3 RGB uint8 in the annotation's frame
    sha256: str  # of the source file's bytes


def sorted_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["instance_id"])


def load_rows_image(rows: list[dict], render) -> DecodedImage:
    """The source image the rows share (RecordError when it cannot be loaded); `render` is a
    RenderConfig."""
    first = rows[0]
    return DecodedImage(*load_image_and_hash(first["image_path"], (first["image_width"], first["image_height"]),
                                             render))


def reject_row(row: dict, error: RecordError, stage: str) -> dict:
    return rejection(row["instance_id"], row["source"], stage, error.reason, error.detail, row["image_path"],
                     error.kind)


def each_row(rows: list[dict], fn: Callable[[dict], T], stage: str) -> tuple[list[tuple[dict, T]], list[dict]]:
    """(row, fn(row)) pairs in row order, and a rejection row for each row whose fn raised RecordError."""
    done, rejected = [], []
    for row in rows:
        try:
            done.append((row, fn(row)))
        except RecordError as e:
            rejected.append(reject_row(row, e, stage))
    return done, rejected


def per_image(rows: list[dict], fn: Callable[[DecodedImage, dict], T], render,
              stage: str) -> tuple[list[tuple[dict, T]], list[dict]]:
    """Decode the rows' image once, then each_row with fn(image, row), rows in instance_id order."""
    rows = sorted_rows(rows)
    try:
        image = load_rows_image(rows, render)
    except RecordError as e:
        return [], [reject_row(r, e, stage) for r in rows]
    return each_row(rows, lambda row: fn(image, row), stage)
