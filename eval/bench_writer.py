"""Write an imported benchmark as an ordinary inpainting shard set, through the shard format's own
writers (schemas/): v2 samples with the "exact-box" schedule (level 0 = the free-form mask, level 1 =
its box), WebDataset tars, rejected.parquet and a manifest whose counts reconcile and whose `inputs`
carry every source file's sha256, so that `smartbrush verify`, the benchmark reader and the
contamination check take it as they take a built set.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from smartbrush.config import load_schedule
from smartbrush.schemas import files, shard_sample, shard_tar
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema
from smartbrush.schemas.level_map import encode_level_map, map_from_levels

SCHEDULE = "exact-box"
STAGE = "bench_import"


@dataclass
class ImportedSample:
    """One benchmark sample at crop resolution, with the source facts its json records."""

    key: str
    image: np.ndarray  # R x R x 3 uint8 RGB
    mask: np.ndarray  # R x R bool: the free-form mask (level 0)
    source: str
    split: str
    image_id: str
    annotation_id: str
    image_path: str
    image_size: list[int]  # [width, height] of the source image file
    image_sha256: str
    category_id: str
    label: str
    captions: list[dict]
    area: int  # mask pixels at source resolution
    box_source_xyxy: list[int]
    crop_window_source_xyxy: list[int]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight [x0, y0, x1, y1) box of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def rejection(record_id: str, source: str, reason: str, detail: str, input_path: str) -> dict:
    return {"record_id": record_id, "source": source, "stage": STAGE, "kind": rejected_schema.REJECTED,
            "reason": reason, "detail": detail, "input": input_path}


def encode_sample(s: ImportedSample, schedule_json: dict, jpeg_quality: int) -> dict[str, bytes]:
    r = s.image.shape[0]
    if s.image.shape != (r, r, 3) or s.mask.shape != (r, r):
        raise ValueError(f"{s.key}: image {s.image.shape} and mask {s.mask.shape} must be R x R")
    box = mask_box(s.mask)
    boxed = np.zeros_like(s.mask)
    boxed[box[1]:box[3], box[0]:box[2]] = True
    meta = {
        "schema": shard_sample.NAME, "schema_version": shard_sample.VERSION, "task": shard_sample.TASK_INPAINTING,
        "instance_id": s.key, "source": s.source, "split": s.split, "image_id": s.image_id,
        "annotation_id": s.annotation_id, "image_path": s.image_path, "image_size": list(s.image_size),
        "image_sha256": s.image_sha256, "category_id": s.category_id, "label": s.label,
        "captions": [dict(c) for c in s.captions], "area": int(s.area), "box_source_xyxy": list(s.box_source_xyxy),
        "crop_window_source_xyxy": list(s.crop_window_source_xyxy), "crop_policy": "scene",
        "box_crop_xyxy": list(box), "resolution": r, "mask_schedule": schedule_json,
    }
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError(f"{s.key}: JPEG encoding failed")
    return {shard_sample.IMAGE_EXT: jpg.tobytes(), shard_sample.LEVELS_EXT: encode_level_map(map_from_levels([s.mask, boxed])),
            shard_sample.META_EXT: shard_sample.encode_json(meta)}


def write_benchmark(out: str, samples: list[ImportedSample], rejected_rows: list[dict], inputs: list[str],
                    config: dict, samples_per_shard: int = 1000, jpeg_quality: int = 95) -> dict:
    """Write the set into `out` (a new or empty folder); returns the manifest. `inputs` are the source
    files read (their sizes and sha256 go into the manifest); the count of inputs is
    len(samples) + len(rejected_rows)."""
    schedule = load_schedule(SCHEDULE).to_json()
    members = [(s.key, encode_sample(s, schedule, jpeg_quality)) for s in sorted(samples, key=lambda s: s.key)]
    return write_set(out, members, rejected_rows, inputs, config, schedule, samples_per_shard)


def write_set(out: str, members: Iterable[tuple[str, dict]], rejected_rows: list[dict], inputs: list[str],
              config: dict, schedule: dict, samples_per_shard: int = 1000) -> dict:
    """Write samples already in the shard format ((key, members), in a deterministic order) as a shard
    set into `out` (a new or empty folder), one shard in memory at a time, with rejected.parquet and a
    manifest that reconciles."""
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out}: not empty; an imported benchmark goes into a new folder")
    shards, written, members = [], 0, iter(members)
    while chunk := list(itertools.islice(members, samples_per_shard)):
        name = shard_tar.shard_name("inpainting", len(shards))
        digest = files.atomic_write_local(os.path.join(out, name), shard_tar.tar_bytes(chunk))
        shards.append(manifest_schema.shard_info(name, len(chunk), digest))
        written += len(chunk)
    rej = rejected_schema.table_bytes(rejected_rows)
    rej_digest = files.atomic_write_local(os.path.join(out, rejected_schema.FILE_NAME), rej)
    input_entries = []
    for path in inputs:
        d = files.digest_file(path)
        input_entries.append({"path": path if files.is_url(path) else os.path.abspath(path), "bytes": d.bytes,
                              "sha256": d.sha256})
    counts = manifest_schema.counts(written + len(rejected_rows), written, rejected_rows)
    manifest = manifest_schema.make_manifest(
        manifest_schema.KIND_INPAINTING, config, schedule, input_entries, counts, shards,
        {"name": rejected_schema.FILE_NAME, "rows": len(rejected_rows), "bytes": rej_digest.bytes,
         "sha256": rej_digest.sha256})
    if not manifest_schema.reconciles(manifest["counts"]):
        raise AssertionError(f"counts do not reconcile: {manifest['counts']}")
    files.atomic_write_local(os.path.join(out, manifest_schema.FILE_NAME), manifest_schema.manifest_bytes(manifest))
    return manifest
