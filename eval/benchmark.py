"""Benchmark sets: an inpainting shard set built by `smartbrush build` (or `shard` / `remask`).

This is the one module of eval/ that reads shard samples, through the shard format's own readers
(schemas/), which know every in-shard mask encoding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from smartbrush.schemas.manifest import read_manifest, read_manifest_bytes
from smartbrush.schemas.shard_sample import decode_jpeg, parse_json, sample_masks, sample_meta
from smartbrush.schemas.shard_set import iter_samples


@dataclass
class BenchmarkSample:
    key: str
    image: np.ndarray  # R x R x 3 uint8
    masks: list[np.ndarray]  # R x R bool per precision level, index = level (0 = exact ... S = box)
    meta: dict

    def prompt(self, source: str = "label") -> str:
        """The class label, or the first caption not made from the label (falls back to the label)."""
        if source == "caption":
            for c in self.meta.get("captions") or []:
                if c.get("model") != "label" and c.get("text"):
                    return c["text"]
        return str(self.meta["label"])

    @property
    def box(self) -> list[int]:
        return list(self.meta["box_crop_xyxy"])

    @property
    def source_ids(self) -> tuple[str, str]:
        return str(self.meta["source"]), str(self.meta["image_id"])

    @property
    def image_sha256(self) -> str | None:
        return self.meta.get("image_sha256")


def benchmark_info(path: str) -> dict:
    """What identifies the set: its path, manifest sha256, mask schedule and sample count."""
    try:
        manifest, data = read_manifest_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest.json (a benchmark is a shard set built by `smartbrush build`)")
    if manifest.get("kind") not in (None, "inpainting"):
        raise ValueError(f"{path}: a {manifest.get('kind')!r} shard set; a benchmark is an inpainting shard set")
    return {
        "path": os.path.abspath(path) if "://" not in path else path,
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
        "mask_schedule": manifest.get("mask_schedule"),
        "samples": sum(int(s["samples"]) for s in manifest["shards"]),
    }


def read_benchmark(path: str, limit: int = 0) -> list[BenchmarkSample]:
    """Every sample of the set in manifest order (the first `limit` when limit > 0)."""
    out = []
    for raw in iter_samples(path, limit or None):
        meta = sample_meta(raw)
        out.append(BenchmarkSample(raw["__key__"], decode_jpeg(raw["jpg"]), sample_masks(raw), meta))
    return out


def iter_source_records(shard_set: str, kind: str | None = None) -> Iterator[dict]:
    """For the contamination check: {key, source, image_id, image_sha256} of every sample of a shard set.

    Inpainting samples go through `sample_meta`; text-to-image samples (img2dataset's json) have no
    source ids, and their `sha256` is the downloaded image's, so it is compared as an image hash."""
    manifest = read_manifest(shard_set)
    kind = kind or manifest.get("kind") or "inpainting"
    for sample in iter_samples(shard_set, exts={"json"}, manifest=manifest):
        key = sample["__key__"]
        if kind == "inpainting":
            meta = sample_meta(sample)
            yield {"key": key, "source": str(meta["source"]), "image_id": str(meta["image_id"]),
                   "image_sha256": meta.get("image_sha256")}
        else:
            meta = parse_json(sample["json"])
            yield {"key": key, "source": None, "image_id": None,
                   "image_sha256": meta.get("image_sha256") or meta.get("sha256")}
