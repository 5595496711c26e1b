"""LAION-Aesthetics metadata: required columns, the per-row filter, and the download list it feeds.

Pure functions on Arrow tables and plain values; no img2dataset import (it is heavy and spawns).
"""

from __future__ import annotations

import glob
import math
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.errors import rejection
from smartbrush.schemas import rejected as rejected_schema

STAGE = "laion"
SOURCE = "laion"
SCORE_COLUMNS = ("AESTHETIC_SCORE", "aesthetic")  # as published, by dataset version
# LAION metadata columns carried into each sample's json when every input has them.
METADATA_COLUMNS = ("WIDTH", "HEIGHT", "similarity", "punsafe", "pwatermark", "AESTHETIC_SCORE", "aesthetic", "hash")
# Our provenance columns in the download list (and so in img2dataset's json and per-shard parquet).
SOURCE_FILE, SOURCE_ROW = "source_file", "source_row"
URL, TEXT = "URL", "TEXT"  # the download list's url and caption column names


@dataclass(frozen=True)
class LaionFilters:
    """Rows are kept when score >= min_aesthetic, punsafe <= max_punsafe, pwatermark <= max_pwatermark,
    WIDTH >= min_width and HEIGHT >= min_height. A filter at its neutral value (<= 0 for the minimums,
    >= 1 for the probabilities) is off: its column is not required and missing values pass."""

    min_aesthetic: float = 5.0
    max_punsafe: float = 0.5
    max_pwatermark: float = 0.5
    min_width: int = 512
    min_height: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Columns:
    """Column names in the input parquet files; score is resolved per file when None."""

    url: str = URL
    caption: str = TEXT
    score: str | None = None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_row(url, caption, score, punsafe, pwatermark, width, height, f: LaionFilters) -> tuple[str, str, str] | None:
    """(kind, reason, detail) for a row that does not go to download, None for one that does.

    Bad input (no URL, no caption) is checked first, then the filters in a fixed order so that a row
    failing several is counted once, under the first."""
    if _missing(url) or not str(url).strip():
        return rejected_schema.REJECTED, "url_missing", "empty or null URL"
    if _missing(caption) or not str(caption).strip():
        return rejected_schema.REJECTED, "caption_missing", "empty or null caption"
    for reason, active, value, bound, fails_below in (
            ("min_aesthetic_score", f.min_aesthetic > 0, score, f.min_aesthetic, True),
            ("max_punsafe", f.max_punsafe < 1, punsafe, f.max_punsafe, False),
            ("max_pwatermark", f.max_pwatermark < 1, pwatermark, f.max_pwatermark, False),
            ("min_width", f.min_width > 0, width, f.min_width, True),
            ("min_height", f.min_height > 0, height, f.min_height, True)):
        if not active:
            continue
        if _missing(value):
            return rejected_schema.FILTERED, reason, "value missing"
        if value < bound if fails_below else value > bound:
            return rejected_schema.FILTERED, reason, f"{value} {'<' if fails_below else '>'} {bound}"
    return None


def required_columns(f: LaionFilters, cols: Columns, score_col: str) -> list[str]:
    """Columns the active filters need."""
    need = [cols.url, cols.caption]
    for column, active in ((score_col, f.min_aesthetic > 0), ("punsafe", f.max_punsafe < 1),
                           ("pwatermark", f.max_pwatermark < 1), ("WIDTH", f.min_width > 0),
                           ("HEIGHT", f.min_height > 0)):
        if active:
            need.append(column)
    return need


def check_columns(names: list[str], f: LaionFilters, cols: Columns, where: str) -> str | None:
    """Raise ValueError naming the first missing column and the columns found; return the score column
    (the one named by Columns.score, else the first of SCORE_COLUMNS present; None when absent)."""
    score = cols.score or next((c for c in SCORE_COLUMNS if c in names), " or ".join(SCORE_COLUMNS))
    for c in required_columns(f, cols, score):
        if c not in names:
            raise ValueError(f"{where}: required column {c!r} is missing; columns found: {list(names)}")
    return score if score in names else None


def expand_inputs(patterns: list[str]) -> list[str]:
    """Input paths with glob patterns (*, ?, [) expanded through Beam's FileSystems (local, gs://, s3://),
    sorted per pattern; a pattern that matches nothing is an error."""
    from apache_beam.io.filesystems import FileSystems

    paths = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            paths.append(pattern)
            continue
        if "://" in pattern:
            found = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
        else:  # Beam's local match wants absolute patterns; keep the user's relative paths
            found = sorted(glob.glob(pattern))
        if not found:
            raise ValueError(f"{pattern}: no file matches")
        paths += found
    return list(dict.fromkeys(paths))


def read_schema_names(path: str) -> list[str]:
    with fileio.open_read(path) as fh:
        return list(pq.read_schema(fh).names)


def _column_values(table: pa.Table, name: str | None) -> list:
    return table.column(name).to_pylist() if name and name in table.column_names else [None] * table.num_rows


def filter_table(table: pa.Table, path: str, f: LaionFilters, cols: Columns, score_col: str | None,
                 ) -> tuple[list[int], list[dict]]:
    """Indices of rows to download, and rejected.parquet rows for the others."""
    values = [_column_values(table, c) for c in (cols.url, cols.caption, score_col, "punsafe", "pwatermark",
                                                   "WIDTH", "HEIGHT")]
    kept, rejected = [], []
    for i, row in enumerate(zip(*values)):
        verdict = check_row(*row, f)
        if verdict is None:
            kept.append(i)
        else:
            kind, reason, detail = verdict
            rejected.append(rejection(record_id(path, i), SOURCE, STAGE, reason, detail, path, kind=kind))
    return kept, rejected


def record_id(path: str, row: int) -> str:
    return f"{path}#{row}"


def _as_float(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col.cast(pa.float64())


def _as_int(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integer pixel sizes; some LAION releases store them as floats with NaN for unknown."""
    import pyarrow.compute as pc

    if pa.types.is_floating(col.type):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        return col.cast(pa.int64(), safe=False)
    return col.cast(pa.int64())


CANONICAL_TYPES = {"WIDTH": _as_int, "HEIGHT": _as_int, "hash": _as_int}


def download_rows(table: pa.Table, kept: list[int], path: str, cols: Columns, metadata: list[str]) -> pa.Table:
    """The kept rows in the download list's schema: URL, TEXT, metadata, source_file, source_row."""
    part = table.take(pa.array(kept, pa.int64()))
    arrays = {URL: part.column(cols.url).cast(pa.string()), TEXT: part.column(cols.caption).cast(pa.string())}
    for name in metadata:
        arrays[name] = CANONICAL_TYPES.get(name, _as_float)(part.column(name))
    arrays[SOURCE_FILE] = pa.array([path] * len(kept), pa.string())
    arrays[SOURCE_ROW] = pa.array(kept, pa.int64())
    return pa.table(arrays)


def common_metadata(names_per_file: list[list[str]]) -> list[str]:
    """LAION metadata columns present in every input, in LAION's order."""
    return [c for c in METADATA_COLUMNS if all(c in names for names in names_per_file)]


class _ArrowSink:
    """What pyarrow's writers need of a Python stream, over fileio.atomic_write's hashing stream."""

    closed = False

    def __init__(self, stream):
        self.stream = stream

    def write(self, data) -> int:
        return self.stream.write(bytes(data))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def write_download_list(paths: list[str], list_path: str, f: LaionFilters, cols: Columns,
                        ) -> tuple[int, int, list[dict]]:
    """Filter every input into one download list (atomic write, input order kept so that a re-run gives the
    same list and so the same img2dataset shards). Returns (input rows, rows to download, rejected rows)."""
    names = [read_schema_names(p) for p in paths]
    score_cols = [check_columns(n, f, cols, p) for n, p in zip(names, paths)]
    metadata = common_metadata(names)
    n_inputs, n_kept, rejected = 0, 0, []

    def write(stream):
        nonlocal n_inputs, n_kept
        writer = None
        for path, names_, score_col in zip(paths, names, score_cols):
            read = [c for c in dict.fromkeys([cols.url, cols.caption, score_col, "punsafe", "pwatermark", *metadata])
                    if c and c in names_]
            with fileio.open_read(path) as fh:
                table = pq.read_table(fh, columns=read)
            kept, rej = filter_table(table, path, f, cols, score_col)
            n_inputs += table.num_rows
            n_kept += len(kept)
            rejected.extend(rej)
            part = download_rows(table, kept, path, cols, metadata)
            if writer is None:
                writer = pq.ParquetWriter(_ArrowSink(stream), part.schema, compression="zstd")
            writer.write_table(part)
        writer.close()

    fileio.atomic_write(list_path, write)
    return n_inputs, n_kept, rejected
