"""`smartbrush stats DIR`: counts from the manifest and distributions over the samples."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
from tqdm import tqdm

from smartbrush.schemas.manifest import read_manifest
from smartbrush.schemas.shard_sample import (TASK_INPAINTING, sample_level_map, sample_meta, sample_num_levels,
                                             sample_task)
from smartbrush.schemas.shard_set import iter_samples


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = np.percentile(np.asarray(values, np.float64), [0, 10, 50, 90, 100])
    return {k: round(float(v), 4) for k, v in zip(("min", "p10", "median", "p90", "max"), q)}


def shard_set_stats(out_dir: str, max_samples: int | None = None, progress: bool = False) -> dict:
    manifest = read_manifest(out_dir)
    labels, sources, coverage = Counter(), Counter(), {}
    n = 0
    for sample in tqdm(iter_samples(out_dir, max_samples), desc="stats", unit="sample", disable=not progress):
        if "json" not in sample:
            continue
        if sample_task(sample) != TASK_INPAINTING:
            labels["(text-to-image)"] += 1
            n += 1
            continue
        meta = sample_meta(sample)
        n += 1
        labels[meta["label"]] += 1
        sources[meta["source"]] += 1
        # Fraction of the crop inside each level: one histogram of the level map (v1 or v2).
        level_map = sample_level_map(sample)
        inside = np.cumsum(np.bincount(level_map.ravel(), minlength=256)[:sample_num_levels(sample, meta)])
        for s, pixels in enumerate(inside):
            coverage.setdefault(s, []).append(float(pixels) / level_map.size)
    return {
        "dir": out_dir,
        "kind": manifest["kind"],
        "counts": manifest["counts"],
        "shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "samples_read": n,
        "sources": dict(sorted(sources.items())),
        "labels": dict(labels.most_common()),
        "mask_coverage_by_level": {str(s): _percentiles(v) for s, v in sorted(coverage.items())},
        "mask_schedule": (manifest.get("mask_schedule") or {}).get("id"),
    }


def format_stats(st: dict) -> str:
    c = st["counts"]
    lines = [
        f"{st['dir']}  ({st['kind']}, schedule {st['mask_schedule']})",
        f"  inputs {c['inputs']}  written {c['written']}  rejected {sum(c['rejected'].values())}  "
        f"filtered {sum(c['filtered'].values())}",
        f"  shards {st['shards']}  bytes {st['bytes']:,}  samples read {st['samples_read']}",
    ]
    for kind in ("rejected", "filtered"):
        if c[kind]:
            lines.append(f"  {kind} by reason: " + ", ".join(f"{k} {v}" for k, v in c[kind].items()))
    if st["sources"]:
        lines.append("  sources: " + ", ".join(f"{k} {v}" for k, v in st["sources"].items()))
    top = list(st["labels"].items())[:15]
    lines.append(f"  labels ({len(st['labels'])}): " + ", ".join(f"{k} {v}" for k, v in top)
                 + (" ..." if len(st["labels"]) > 15 else ""))
    if st["mask_coverage_by_level"]:
        lines.append("  mask coverage of the crop by level (median [p10, p90]):")
        for s, p in st["mask_coverage_by_level"].items():
            lines.append(f"    s={s}: {p['median']:.3f} [{p['p10']:.3f}, {p['p90']:.3f}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartbrush stats",
                                     description="Counts, label distribution and mask coverage per level of a shard set.")
    parser.add_argument("dir")
    parser.add_argument("--max-samples", type=int, default=None, help="read at most N samples")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    st = shard_set_stats(args.dir, args.max_samples, progress=not args.json)
    print(json.dumps(st, indent=1) if args.json else format_stats(st))
    return 0
