"""Contamination check: does the benchmark share source images with the checkpoint's training data?

The checkpoint's `lineage.json` names every shard set the training run read (path, kind, the sha256 of
its manifest). A benchmark sample overlaps a training sample when both come from the same source image:
the same (source, image_id), or the same `image_sha256` (the source image file's sha256, present in
samples built by a smartbrush that records it; img2dataset's `sha256` for text-to-image samples).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from smartbrush.eval.benchmark import BenchmarkSample, iter_source_records
from smartbrush.schemas import files
from smartbrush.schemas.manifest import read_manifest_bytes

LINEAGE_FILE = "lineage.json"
LINEAGE_SCHEMA = "smartbrush.lineage"


class ContaminationError(RuntimeError):
    pass


def find_lineage(checkpoint: str) -> str | None:
    """lineage.json in the checkpoint folder or its parent (a run folder's `final/` is a checkpoint too)."""
    for folder in (checkpoint, os.path.dirname(os.path.abspath(checkpoint))):
        path = os.path.join(folder, LINEAGE_FILE)
        if os.path.isfile(path):
            return path
    return None


def read_lineage(path: str) -> dict:
    with open(path) as f:
        lineage = json.load(f)
    if lineage.get("schema") != LINEAGE_SCHEMA or not isinstance(lineage.get("shard_sets"), list):
        raise ValueError(f"{path}: not a {LINEAGE_SCHEMA} file (schema and shard_sets expected)")
    return lineage


def _resolve(shard_path: str, lineage_path: str) -> str:
    if "://" in shard_path or os.path.isabs(shard_path) or files.exists(shard_path):
        return shard_path
    return os.path.join(os.path.dirname(os.path.abspath(lineage_path)), shard_path)


@dataclass
class ContaminationReport:
    checked: bool
    lineage: str | None
    shard_sets: list[dict] = field(default_factory=list)  # path, kind, manifest_sha256, samples read, match
    overlaps: list[dict] = field(default_factory=list)  # benchmark key, training key, shard set, by
    benchmark_samples_overlapping: int = 0
    note: str = ""

    def to_json(self) -> dict:
        return {"checked": self.checked, "lineage": self.lineage, "shard_sets": self.shard_sets,
                "benchmark_samples_overlapping": self.benchmark_samples_overlapping,
                "overlaps": self.overlaps, "note": self.note}


def check(checkpoint: str, samples: list[BenchmarkSample], max_listed: int = 1000) -> ContaminationReport:
    """Compare the benchmark's source images with every training shard set of the checkpoint's lineage."""
    lineage_path = find_lineage(checkpoint)
    if lineage_path is None:
        return ContaminationReport(False, None, note=f"no {LINEAGE_FILE} in {checkpoint} or its parent folder")
    lineage = read_lineage(lineage_path)
    by_ids: dict[tuple[str, str], list[str]] = {}
    by_hash: dict[str, list[str]] = {}
    for s in samples:
        by_ids.setdefault(s.source_ids, []).append(s.key)
        if s.image_sha256:
            by_hash.setdefault(s.image_sha256, []).append(s.key)
    report = ContaminationReport(True, os.path.abspath(lineage_path))
    hit_keys: set[str] = set()
    for entry in lineage["shard_sets"]:
        path = _resolve(entry["path"], lineage_path)
        try:
            manifest_data = read_manifest_bytes(path)[1]
        except (FileNotFoundError, ValueError):
            raise ContaminationError(f"training shard set {entry['path']} (from {lineage_path}) is not readable; "
                                     "the contamination check cannot run (pass --allow-overlap to skip it)") from None
        manifest_sha = hashlib.sha256(manifest_data).hexdigest()
        info = {"path": entry["path"], "kind": entry.get("kind"), "manifest_sha256": entry.get("manifest_sha256"),
                "manifest_matches_lineage": manifest_sha == entry.get("manifest_sha256"), "samples_read": 0}
        for rec in tqdm(iter_source_records(path, entry.get("kind")), desc=f"contamination {os.path.basename(path)}",
                        unit="sample", leave=False):
            info["samples_read"] += 1
            found = []
            if rec["source"] is not None and (rec["source"], rec["image_id"]) in by_ids:
                found += [(k, "source_image_id") for k in by_ids[(rec["source"], rec["image_id"])]]
            if rec["image_sha256"] and rec["image_sha256"] in by_hash:
                found += [(k, "image_sha256") for k in by_hash[rec["image_sha256"]]]
            for bench_key, by in found:
                hit_keys.add(bench_key)
                if len(report.overlaps) < max_listed:
                    report.overlaps.append({"benchmark_key": bench_key, "training_key": rec["key"],
                                            "shard_set": entry["path"], "by": by})
        report.shard_sets.append(info)
    report.benchmark_samples_overlapping = len(hit_keys)
    return report
