"""rejected.parquet: every input record that did not reach the output, with stage, reason, detail."""

from __future__ import annotations

import io
import re

import pyarrow as pa
import pyarrow.parquet as pq

NAME = "smartbrush.rejected"
VERSION = 1
FILE_NAME = "rejected.parquet"

# kind: "rejected" (bad input) or "filtered" (a deliberate filter). Every reason a job emits is
# listed here, by stage, so that users can rely on them.
REJECTED = "rejected"
FILTERED = "filtered"

REASONS_REJECTED = (
    # ingest, shard and caption (the corpus build)
    "image_missing",
    "image_unreadable",
    "image_too_large",
    "image_size_mismatch",
    "invalid_polygon",
    "invalid_rle",
    "rle_size_mismatch",
    "empty_mask",
    "mask_missing",
    "mask_unreadable",
    "mask_size_mismatch",
    "unknown_category",
    "unknown_image",
    "invalid_annotation",
    "duplicate_instance",
    "crop_failed",
    "caption_degenerate",
    # remask
    "shard_missing",
    "shard_corrupt",
    "sample_invalid",
    # laion: the download list, then img2dataset's failures (plus http_<status>, see HTTP_REASON)
    "url_missing",
    "caption_missing",
    "timeout",
    "truncated",
    "image_undecodable",
    "image_too_small",
    "image_area_too_large",
    "aspect_ratio_too_large",
    "hash_mismatch",
    "disallowed_by_robots",
    "connection_refused",
    "dns_error",
    "ssl_error",
    "connection_closed",
    "invalid_url",
    "download_error",
    "not_recorded",
)
# img2dataset's HTTP errors: "http_" and the status code, e.g. http_404.
HTTP_REASON = re.compile(r"http_\d{3}")
# too_small_at_resolution: the object's box is shorter than render.min_object_size_at_resolution
# pixels (its longer side) in the R x R crop. Then laion's five filters, and `bench import --format
# openimages-paper`'s min_image_side (a source image under the paper's 512 px).
REASONS_FILTERED = ("crowd", "min_area", "min_box_side", "max_instances_per_image", "too_small_at_resolution",
                    "min_aesthetic_score", "max_punsafe", "max_pwatermark", "min_width", "min_height",
                    "min_image_side")

SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),  # instance_id where one could be formed, else the raw record ref
        ("source", pa.string()),
        ("stage", pa.string()),  # ingest | caption | shard | remask | laion
        ("kind", pa.string()),  # rejected | filtered
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("input", pa.string()),  # the file the record came from
    ],
    metadata={b"smartbrush.schema": NAME.encode(), b"smartbrush.schema_version": str(VERSION).encode()},
)


def table_bytes(rows: list[dict]) -> bytes:
    """rejected.parquet bytes, rows sorted so that the file is deterministic."""
    rows = sorted(rows, key=lambda r: (r["record_id"], r["stage"], r["reason"], r["detail"]))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf, compression="zstd")
    return buf.getvalue()


def parse_table(data: bytes) -> list[dict]:
    """The rows of rejected.parquet bytes, read synchronously on the calling thread.

    pq.read_table (the dataset reader) and a Python file object both hand reads to pyarrow's I/O
    thread pool; a buffer that one of its threads releases while the interpreter exits aborts the
    process ("terminate called without an active exception", status 134). ParquetFile over an Arrow
    BufferReader reads in place with no thread involved."""
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False).to_pylist()
