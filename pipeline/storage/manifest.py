"""manifest.json and rejected.parquet: writing them, and verifying a shard set against them."""

from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from smartbrush import __version__
from smartbrush.pipeline.storage import fileio
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema


def rejected_table_bytes(rows: list[dict]) -> bytes:
    """rejected.parquet bytes, rows sorted so that the file is deterministic."""
    rows = sorted(rows, key=lambda r: (r["record_id"], r["stage"], r["reason"], r["detail"]))
    table = pa.Table.from_pylist(rows, schema=rejected_schema.SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_rejected(out_dir: str) -> list[dict]:
    path = fileio.join(out_dir, rejected_schema.FILE_NAME)
    if not fileio.exists(path):
        return []
    return pq.read_table(io.BytesIO(fileio.read_bytes(path))).to_pylist()


def counts(inputs: int, written: int, rejected_rows: list[dict]) -> dict:
    by_kind = {rejected_schema.REJECTED: Counter(), rejected_schema.FILTERED: Counter()}
    for r in rejected_rows:
        by_kind[r["kind"]][r["reason"]] += 1
    return {
        "inputs": inputs,
        "written": written,
        "rejected": dict(sorted(by_kind[rejected_schema.REJECTED].items())),
        "filtered": dict(sorted(by_kind[rejected_schema.FILTERED].items())),
    }


def reconciles(c: dict) -> bool:
    return c["inputs"] == c["written"] + sum(c["rejected"].values()) + sum(c["filtered"].values())


def make_manifest(kind: str, config: dict, schedule: dict | None, inputs: list[dict], counts_: dict,
                  shards: list[dict], rejected_file: dict, lineage: dict | None = None) -> dict:
    return {
        "schema": manifest_schema.NAME,
        "schema_version": manifest_schema.VERSION,
        "kind": kind,
        "tool_version": __version__,
        "config": config,
        "mask_schedule": schedule,
        "inputs": sorted(inputs, key=lambda i: i["path"]),
        "counts": counts_,
        "shards": sorted(shards, key=lambda s: s["name"]),
        "rejected_file": rejected_file,
        "lineage": lineage or {},
    }


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def write_rejected_and_manifest(out_dir: str, rejected_rows: list[dict], build_manifest) -> dict:
    """Write rejected.parquet, then manifest.json (last: its presence marks a finished set).

    `build_manifest(rejected_file_info)` returns the manifest dict."""
    data = rejected_table_bytes(rejected_rows)
    nbytes, sha, _ = fileio.atomic_write_bytes(fileio.join(out_dir, rejected_schema.FILE_NAME), data)
    manifest = build_manifest({"name": rejected_schema.FILE_NAME, "rows": len(rejected_rows), "bytes": nbytes,
                               "sha256": sha})
    fileio.atomic_write_bytes(fileio.join(out_dir, manifest_schema.FILE_NAME), manifest_bytes(manifest))
    return manifest


def read_manifest(out_dir: str) -> dict:
    path = fileio.join(out_dir, manifest_schema.FILE_NAME)
    if not fileio.exists(path):
        raise FileNotFoundError(f"{out_dir}: no {manifest_schema.FILE_NAME}: not a finished shard set")
    manifest = json.loads(fileio.read_bytes(path))
    manifest_schema.check_header(manifest, path)
    return manifest


def input_file_entry(path: str) -> dict:
    nbytes, sha = fileio.sha256_file(path)
    return {"path": path, "bytes": nbytes, "sha256": sha}


class ReconciliationError(RuntimeError):
    """inputs != written + rejected + filtered: a record was lost or counted twice."""


def finalize_set(out_dir: str, kind: str, config: dict, schedule: dict | None, input_files: list[dict],
                 n_inputs: int, shards: list[dict], rejected_rows: list[dict], lineage: dict | None = None) -> dict:
    """Check that the counts reconcile, then write rejected.parquet and manifest.json (last: its
    presence marks a finished set). Every job's finalize goes through here."""
    written = sum(s["samples"] for s in shards)
    c = counts(n_inputs, written, rejected_rows)
    if not reconciles(c):
        raise ReconciliationError(
            f"{out_dir}: counts do not reconcile: inputs {c['inputs']} != written {c['written']} + rejected "
            f"{sum(c['rejected'].values())} {c['rejected']} + filtered {sum(c['filtered'].values())} "
            f"{c['filtered']}; no manifest written")
    listed = [] if kind == manifest_schema.KIND_INSTANCE_TABLE else list(shards)
    return write_rejected_and_manifest(
        out_dir, rejected_rows, lambda rej: make_manifest(kind, config, schedule, input_files, c, listed, rej, lineage))
