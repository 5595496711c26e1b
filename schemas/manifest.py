"""manifest.json beside every shard set."""

from __future__ import annotations

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
