"""Finishing a shard set through Beam's FileSystems: rejected.parquet and manifest.json written
(the formats and their parsers are schemas/manifest.py and schemas/rejected.py), and read back on
any runner's filesystem."""

from __future__ import annotations

from smartbrush.pipeline.storage import fileio
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema
from smartbrush.schemas.manifest import counts, make_manifest, manifest_bytes, reconciles


def read_rejected(out_dir: str) -> list[dict]:
    path = fileio.join(out_dir, rejected_schema.FILE_NAME)
    if not fileio.exists(path):
        return []
    return rejected_schema.parse_table(fileio.read_bytes(path))


def read_manifest(out_dir: str) -> dict:
    path = fileio.join(out_dir, manifest_schema.FILE_NAME)
    if not fileio.exists(path):
        raise manifest_schema.missing_manifest(out_dir)
    return manifest_schema.parse_manifest(fileio.read_bytes(path), path)


def write_rejected_and_manifest(out_dir: str, rejected_rows: list[dict], build_manifest) -> dict:
    """Write rejected.parquet, then manifest.json (last: its presence marks a finished set).

    `build_manifest(rejected_file_info)` returns the manifest dict."""
    data = rejected_schema.table_bytes(rejected_rows)
    nbytes, sha, _ = fileio.atomic_write_bytes(fileio.join(out_dir, rejected_schema.FILE_NAME), data)
    manifest = build_manifest({"name": rejected_schema.FILE_NAME, "rows": len(rejected_rows), "bytes": nbytes,
                               "sha256": sha})
    fileio.atomic_write_bytes(fileio.join(out_dir, manifest_schema.FILE_NAME), manifest_bytes(manifest))
    return manifest


def input_file_entry(path: str) -> dict:
    digest = fileio.digest_file(path)
    return {"path": path, "bytes": digest.bytes, "sha256": digest.sha256}


class ReconciliationError(RuntimeError):
    """inputs != written + rejected + filtered: a record was lost or counted twice."""


def finalize_set(out_dir: str, kind: str, config: dict, schedule: dict | None, input_files: list[dict],
                 n_inputs: int, shards: list[dict], rejected_rows: list[dict], lineage: dict | None = None,
                 upstream: str | None = None) -> dict:
    """Check that the counts reconcile, then write rejected.parquet and manifest.json (last: its
    presence marks a finished set). Every job's finalize goes through here.

    With `upstream` (the shard set or table this stage read) the counts carry that set's forward: its
    inputs stand for `n_inputs` and its rejected rows join this stage's, so that the manifest
    reconciles back to the original records."""
    if upstream:
        rejected_rows = rejected_rows + read_rejected(upstream)
        n_inputs = read_manifest(upstream)["counts"]["inputs"]
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
