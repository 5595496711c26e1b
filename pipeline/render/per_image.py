"""Every sample of one source image, decoded once (imaging/image_rows.py)."""

from __future__ import annotations

from smartbrush.config import RenderConfig
from smartbrush.pipeline.imaging.image_rows import per_image
from smartbrush.pipeline.render.samples import render_sample
from smartbrush.schemas.mask_schedule import MaskSchedule


def render_image(rows: list[dict], schedule: MaskSchedule, render: RenderConfig,
                 stage: str = "shard") -> tuple[list[tuple[str, dict]], list[dict]]:
    """(instance_id, sample) pairs and rejection rows for all instances of one source image."""
    done, rejected = per_image(
        rows, lambda image, row: render_sample(image.pixels, {**row, "image_sha256": image.sha256}, schedule, render),
        render, stage)
    return [(row["instance_id"], sample) for row, sample in done], rejected
