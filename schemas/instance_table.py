"""Instance table: one Parquet row per object instance, everything later stages need."""

from __future__ import annotations

import pyarrow as pa

NAME = "smartbrush.instance_table"
VERSION = 1
FILE_GLOB = "instances-*.parquet"

CAPTION_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("model", pa.string()),  # "label" or a model path / hub id
        ("revision", pa.string()),  # checkpoint revision or content hash; "" when not applicable
        ("settings", pa.string()),  # generation settings as canonical JSON
    ]
)

SCHEMA = pa.schema(
    [
        ("instance_id", pa.string()),  # "{source}_{split}_{image_id}_{annotation_id}", no dots
        ("source", pa.string()),  # "coco" | "openimages"
        ("split", pa.string()),
        ("image_id", pa.string()),
        ("annotation_id", pa.string()),
        ("image_path", pa.string()),  # any Beam FileSystems path (local, gs://, s3://)
        ("image_width", pa.int32()),  # in the annotation's coordinate frame
        ("image_height", pa.int32()),
        ("category_id", pa.string()),  # COCO category id or OpenImages LabelName
        ("label", pa.string()),
        ("box_xyxy", pa.list_(pa.int32(), 4)),  # tight box of the exact mask, x1/y1 exclusive
        ("area", pa.int64()),  # pixels in the exact mask
        ("iscrowd", pa.bool_()),
        ("mask_rle_counts", pa.string()),  # compressed COCO RLE at source resolution
        ("mask_rle_size", pa.list_(pa.int32(), 2)),  # [height, width]
        ("captions", pa.list_(CAPTION_TYPE)),
    ],
    metadata={b"smartbrush.schema": NAME.encode(), b"smartbrush.schema_version": str(VERSION).encode()},
)

COLUMNS = tuple(SCHEMA.names)


def check_schema(schema: pa.Schema, where: str) -> None:
    """Raise ValueError when a Parquet file is not an instance table this version reads."""
    meta = schema.metadata or {}
    name = meta.get(b"smartbrush.schema", b"").decode()
    version = meta.get(b"smartbrush.schema_version", b"0").decode()
    if name != NAME:
        raise ValueError(f"{where}: not a smartbrush instance table (schema metadata {name!r})")
    if int(version) != VERSION:
        raise ValueError(f"{where}: instance table version {version}, this smartbrush reads {VERSION}")
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{where}: instance table lacks columns {missing}")
