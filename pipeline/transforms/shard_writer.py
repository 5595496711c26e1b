"""One planned shard, rendered where it is written: every source image is read and decoded once for
all of its instances (imaging/image_rows.py; captions included when a model captions them), and
each image's samples go to the tar as soon as they exist, so a worker holds one caption batch of
images, one image's samples and one shard's rows, never a shard's samples.

Next to each shard, `shard_parts/<name>.json` (written last) records the plan digest, the shard's
info and its rejections; a re-run reuses a shard only when that record exists, its plan matches and
no image of it failed to load (such a shard is rendered again: the image may have been fixed).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from smartbrush.config import RenderConfig
from smartbrush.pipeline.caption.captioners import Captioner, add_caption
from smartbrush.pipeline.errors import RecordError
from smartbrush.pipeline.imaging.image_rows import each_row, load_rows_image, reject_row
from smartbrush.pipeline.render.samples import render_sample
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.shard_plan import image_key, plan_digest
from smartbrush.schemas.manifest import shard_info
from smartbrush.schemas.shard_tar import write_tar_stream
from smartbrush.schemas import instance_table
from smartbrush.schemas.mask_schedule import MaskSchedule

PARTS_DIR = "shard_parts"
PART_VERSION = 1


@dataclass
class ShardOutcome:
    info: dict | None  # None when every instance of the shard was rejected
    rejected: list[dict]
    written_now: bool
    images_decoded: int = 0
    captions_added: int = 0
    captions_dropped: int = 0


@dataclass
class _Image:
    rows: list[dict]
    image: np.ndarray | None = None  # None once rendered, or when it could not be loaded (`error`)
    error: RecordError | None = None
    rejected: list[dict] = field(default_factory=list)


def part_path(out_dir: str, name: str) -> str:
    return fileio.join(out_dir, PARTS_DIR, f"{name}.json")


def table_part_path(table_dir: str, shard: str) -> str:
    """The instance-table file holding the rows of shard `shard` (e.g. instances-inpainting-000003.parquet)."""
    return fileio.join(table_dir, f"instances-{shard.removesuffix('.tar')}.parquet")


def _retry_on_resume(row: dict) -> bool:
    """Rejections that a re-run must try again: the image file may have been added or fixed."""
    return row["reason"].startswith("image_")


def reusable_part(out_dir: str, name: str, digest: str) -> dict | None:
    path = part_path(out_dir, name)
    if not fileio.exists(path):
        return None
    try:
        part = json.loads(fileio.read_bytes(path))
    except ValueError:
        return None
    if part.get("version") != PART_VERSION or part.get("plan") != digest:
        return None
    if part["info"] is not None and not fileio.exists(fileio.join(out_dir, name)):
        return None
    if any(_retry_on_resume(r) for r in part["rejected"]):
        return None
    return part


def _batches(row_lists: list[list[dict]], batch: int) -> Iterator[list[list[dict]]]:
    """Consecutive images grouped until they hold at least `batch` instances (the caption batch)."""
    group, n = [], 0
    for rows in row_lists:
        group.append(rows)
        n += len(rows)
        if n >= batch:
            yield group
            group, n = [], 0
    if group:
        yield group


class ShardRenderer:
    """Renders and writes planned shards; holds the captioner (its model loads on first use)."""

    def __init__(self, out_dir: str, schedule: MaskSchedule, render: RenderConfig, captioners: list[Captioner] = (),
                 table_dir: str | None = None, stage: str = "shard", caption_batch: int = 32):
        self.out_dir, self.schedule, self.render, self.stage = out_dir, schedule, render, stage
        self.captioners, self.table_dir, self.caption_batch = list(captioners), table_dir, caption_batch

    def write(self, name: str, row_lists: list[list[dict]]) -> ShardOutcome:
        row_lists = sorted((sorted(rs, key=lambda r: r["instance_id"]) for rs in row_lists), key=image_key)
        digest = plan_digest(r["instance_id"] for rs in row_lists for r in rs)
        part = reusable_part(self.out_dir, name, digest)
        if part is not None:
            return ShardOutcome(part["info"], part["rejected"], written_now=False)
        outcome = ShardOutcome(None, [], written_now=True)
        table_rows: list[dict] = []
        path = fileio.join(self.out_dir, name)
        file_digest = fileio.atomic_write(
            path, lambda stream: setattr(outcome, "info", write_tar_stream(
                stream, self._samples(row_lists, outcome, table_rows))))
        written = outcome.info
        if written:
            outcome.info = shard_info(name, written, file_digest)
        else:
            outcome.info = None
            FileSystems.delete([path])
        if self.table_dir:
            self._write_table_part(name, table_rows)
        record = {"version": PART_VERSION, "plan": digest, "info": outcome.info,
                  "instances": sum(len(rs) for rs in row_lists),
                  "rejected": sorted(outcome.rejected, key=lambda r: (r["record_id"], r["stage"], r["reason"]))}
        fileio.atomic_write_bytes(part_path(self.out_dir, name), json.dumps(record, sort_keys=True).encode())
        outcome.rejected = record["rejected"]
        return outcome

    def _load(self, rows: list[dict], outcome: ShardOutcome) -> _Image:
        try:
            image = load_rows_image(rows, self.render)
        except RecordError as e:
            return _Image(rows, error=e)
        outcome.images_decoded += 1
        return _Image([{**r, "image_sha256": image.sha256} for r in rows], image.pixels)

    def _caption(self, images: list[_Image], outcome: ShardOutcome) -> None:
        # Model captions run here, in the DoFn that renders the shard, not through RunInference as in
        # `smartbrush caption` (transforms/caption.py): RunInference is a transform between
        # PCollections, so the crops would have to leave this DoFn and the caption come back before
        # the sample is rendered, decoding each image twice or shuffling decoded pixels. Both paths
        # share the crop (captioner.crop_input) and the model call (BlipRuntime.caption_batch).
        for captioner in self.captioners:
            if not captioner.needs_image:
                for img in images:
                    img.rows = [r if rec is None else add_caption(r, rec)
                                for r, rec in zip(img.rows, captioner.caption_rows(img.rows))]
                continue
            targets, crops = [], []
            for img in images:
                if img.image is None:
                    continue
                # as `smartbrush caption` does: a row without a crop goes no further
                done, rejected = each_row(img.rows, lambda row: captioner.crop_input(img.image, row), "caption")
                img.rejected += rejected
                img.rows = [row for row, _ in done]
                crops += [crop for _, crop in done]
                targets += [(img, i) for i in range(len(done))]
            records = captioner.caption_rows([img.rows[i] for img, i in targets], crops) if targets else []
            for (img, i), record in zip(targets, records):
                if record is None:
                    outcome.captions_dropped += 1
                else:
                    outcome.captions_added += 1
                    img.rows[i] = add_caption(img.rows[i], record)

    def _samples(self, row_lists: list[list[dict]], outcome: ShardOutcome, table_rows: list[dict]):
        for group in _batches(row_lists, self.caption_batch):
            images = [self._load(rows, outcome) for rows in group]
            self._caption(images, outcome)
            for img in images:
                table_rows.extend({k: v for k, v in r.items() if k != "image_sha256"} for r in img.rows)
                outcome.rejected += img.rejected
                if img.error is not None:
                    outcome.rejected += [reject_row(r, img.error, self.stage) for r in img.rows]
                    continue
                done, rejected = each_row(
                    img.rows, lambda row: render_sample(img.image, row, self.schedule, self.render), self.stage)
                outcome.rejected += rejected
                img.image = None  # drop the decoded image before the next one
                for row, sample in done:
                    yield row["instance_id"], sample

    def _write_table_part(self, name: str, rows: list[dict]) -> None:
        table = pa.Table.from_pylist(rows, schema=instance_table.SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        fileio.atomic_write_bytes(table_part_path(self.table_dir, name), buf.getvalue())
