"""manifest.json beside every shard set: its declaration, how it is made, parsed and read, and the
integrity check of a shard against its entry."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from smartbrush import __version__
from smartbrush.schemas import files
from smartbrush.schemas import rejected as rejected_schema

NAME = "smartbrush.manifest"
# v2: shard entries carry "crc32" beside "sha256" (a fast integrity check for readers such as remask).
VERSION = 2
READABLE_VERSIONS = (1, 2)
FILE_NAME = "manifest.json"
CONFIG_FILE_NAME = "config.yaml"

KIND_INPAINTING = "inpainting"
KIND_TEXT_TO_IMAGE = "text_to_image"
KIND_INSTANCE_TABLE = "instance_table"

# Top-level keys, in the order they are written (json.dumps(sort_keys=True) is used for bytes).
KEYS = (
    "schema",
    "schema_version",
    "kind",
    "tool_version",
    "config",
    "mask_schedule",  # {"id", "hash", "levels"} or null for text-to-image sets
    "inputs",  # [{"path", "bytes", "sha256"}]
    "counts",  # {"inputs", "written", "rejected": {reason: n}, "filtered": {reason: n}}
    "shards",  # [{"name", "samples", "bytes", "sha256", "crc32"}]  (crc32: 8 hex digits, since v2)
    "rejected_file",  # {"name", "rows", "sha256"}
    "lineage",  # optional: {"input_manifest_sha256": ...} for derived sets (remask)
)


def check_header(manifest: dict, where: str) -> None:
    if manifest.get("schema") != NAME:
        raise ValueError(f"{where}: not a smartbrush manifest (schema {manifest.get('schema')!r})")
    if manifest.get("schema_version") not in READABLE_VERSIONS:
        raise ValueError(f"{where}: manifest version {manifest.get('schema_version')}, this smartbrush reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")


def shard_info(name: str, samples: int, digest) -> dict:
    """A manifest shard entry from a file digest (schemas.files.Digest)."""
    return {"name": name, "samples": samples, "bytes": digest.bytes, "sha256": digest.sha256, "crc32": digest.crc32}


def shard_problem(data: bytes, entry: dict) -> str | None:
    """Why `data` is not the shard the manifest entry describes, or None. The check is the entry's
    CRC-32 when it has one (v2: ~50 GB/s, where sha256 would cost a reader about 0.08 ms per sample
    at R = 512), else its sha256 (v1). `smartbrush verify` checks both."""
    if len(data) != entry["bytes"]:
        return f"{len(data)} bytes; the manifest says {entry['bytes']}"
    if "crc32" in entry:
        crc = files.crc32_hex(data)
        return None if crc == entry["crc32"] else f"CRC-32 {crc}; the manifest says {entry['crc32']}"
    sha = hashlib.sha256(data).hexdigest()
    return None if sha == entry["sha256"] else f"sha256 {sha[:12]}; the manifest says {entry['sha256'][:12]}"


def counts(inputs: int, written: int, rejected_rows: list[dict]) -> dict:
    """The manifest's counts: {"inputs", "written", "rejected": {reason: n}, "filtered": {reason: n}}."""
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
        "schema": NAME,
        "schema_version": VERSION,
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


def parse_manifest(data: bytes, where: str) -> dict:
    manifest = json.loads(data)
    check_header(manifest, where)
    return manifest


def missing_manifest(shard_set: str) -> FileNotFoundError:
    return FileNotFoundError(f"{shard_set}: no {FILE_NAME}: not a finished shard set")


def read_manifest_bytes(shard_set: str) -> tuple[dict, bytes]:
    """(manifest, its bytes) of a finished shard set, a local folder or a URL. Corpus jobs read
    through Beam's FileSystems instead (pipeline/storage/manifest.py), with the same parser."""
    path = files.join(shard_set, FILE_NAME)
    try:
        data = files.read_bytes(path)
    except FileNotFoundError:
        raise missing_manifest(shard_set) from None
    return parse_manifest(data, path), data


def read_manifest(shard_set: str) -> dict:
    return read_manifest_bytes(shard_set)[0]


def manifest_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
