"""`smartbrush verify DIR`: every shard and count checked against manifest.json."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from tqdm import tqdm

from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.manifest import read_manifest, read_rejected, reconciles
from smartbrush.pipeline.storage.shards import count_samples
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema


def verify_shard_set(out_dir: str, progress: bool = False) -> list[str]:
    """Problems found (empty when the set matches its manifest exactly)."""
    try:
        manifest = read_manifest(out_dir)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    problems = []
    c = manifest["counts"]
    if not reconciles(c):
        problems.append(f"counts do not reconcile: inputs {c['inputs']} != written {c['written']} + rejected "
                        f"{sum(c['rejected'].values())} + filtered {sum(c['filtered'].values())}")
    shards = manifest["shards"]
    if manifest["kind"] != manifest_schema.KIND_INSTANCE_TABLE and sum(s["samples"] for s in shards) != c["written"]:
        problems.append(f"shards hold {sum(s['samples'] for s in shards)} samples, counts say {c['written']}")
    for s in tqdm(shards, desc="verify", unit="shard", disable=not progress):
        path = fileio.join(out_dir, s["name"])
        if not fileio.exists(path):
            problems.append(f"{s['name']}: missing")
            continue
        digest = fileio.digest_file(path)
        if (digest.bytes, digest.sha256) != (s["bytes"], s["sha256"]):
            problems.append(f"{s['name']}: {digest.bytes} bytes sha256 {digest.sha256[:12]}..., manifest says "
                            f"{s['bytes']} bytes {s['sha256'][:12]}...")
            continue
        if "crc32" in s and digest.crc32 != s["crc32"]:
            problems.append(f"{s['name']}: CRC-32 {digest.crc32}, manifest says {s['crc32']}")
            continue
        try:
            n = count_samples(path)
        except Exception as e:
            problems.append(f"{s['name']}: unreadable tar ({type(e).__name__}: {e})")
            continue
        if n != s["samples"]:
            problems.append(f"{s['name']}: {n} samples, manifest says {s['samples']}")
    rf = manifest.get("rejected_file") or {}
    if rf:
        path = fileio.join(out_dir, rf["name"])
        if not fileio.exists(path):
            problems.append(f"{rf['name']}: missing")
        else:
            nbytes, sha, _ = fileio.digest_file(path)
            if sha != rf["sha256"]:
                problems.append(f"{rf['name']}: sha256 differs from the manifest")
            rows = read_rejected(out_dir)
            by = {k: Counter(r["reason"] for r in rows if r["kind"] == k)
                  for k in (rejected_schema.REJECTED, rejected_schema.FILTERED)}
            if dict(by[rejected_schema.REJECTED]) != c["rejected"] or dict(by[rejected_schema.FILTERED]) != c["filtered"]:
                problems.append(f"{rf['name']}: reasons do not match the manifest's counts")
    if "://" not in out_dir:
        listed = {s["name"] for s in shards}
        extra = sorted(n for n in os.listdir(out_dir) if n.endswith(".tar") and n not in listed)
        if extra:
            problems.append(f"tars not in the manifest: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartbrush verify",
                                     description="Recompute every shard's size, sha256 and sample count and the "
                                                 "counts' reconciliation against manifest.json; exit 1 on any mismatch.")
    parser.add_argument("dir", help="shard set folder (holds manifest.json)")
    args = parser.parse_args(argv)
    problems = verify_shard_set(args.dir, progress=sys.stderr.isatty())
    manifest_ok = not problems
    for p in problems:
        print(f"MISMATCH {p}")
    if manifest_ok:
        m = read_manifest(args.dir)
        print(f"OK {args.dir}: {len(m['shards'])} shards, {m['counts']['written']} samples, "
              f"{m['counts']['inputs']} inputs reconciled")
    return 0 if manifest_ok else 1
