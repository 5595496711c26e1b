"""`smartbrush verify DIR`: every shard and count checked against manifest.json. Read-only: reads go
through the formats' Beam-free readers (schemas/), a local folder or a URL."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from tqdm import tqdm

from smartbrush.schemas import files
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema
from smartbrush.schemas.manifest import read_manifest, reconciles
from smartbrush.schemas.shard_tar import sample_keys


def count_samples(path: str) -> int:
    with files.open_read(path) as f:
        return len(set(sample_keys(f)))


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
        path = files.join(out_dir, s["name"])
        if not files.exists(path):
            problems.append(f"{s['name']}: missing")
            continue
        digest = files.digest_file(path)
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
        path = files.join(out_dir, rf["name"])
        if not files.exists(path):
            problems.append(f"{rf['name']}: missing")
        else:
            data = files.read_bytes(path)
            if files.digest_bytes(data).sha256 != rf["sha256"]:
                problems.append(f"{rf['name']}: sha256 differs from the manifest")
            rows = rejected_schema.parse_table(data)
            by = {k: Counter(r["reason"] for r in rows if r["kind"] == k)
                  for k in (rejected_schema.REJECTED, rejected_schema.FILTERED)}
            if dict(by[rejected_schema.REJECTED]) != c["rejected"] or dict(by[rejected_schema.FILTERED]) != c["filtered"]:
                problems.append(f"{rf['name']}: reasons do not match the manifest's counts")
    if not files.is_url(out_dir):
        listed = {s["name"] for s in shards}
        extra = sorted(n for n in os.listdir(files.local_path(out_dir)) if n.endswith(".tar") and n not in listed)
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
