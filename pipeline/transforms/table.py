"""Reading and writing the instance table inside a pipeline."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from smartbrush.pipeline.storage import fileio
from smartbrush.schemas import instance_table


def write_instance_table(rows, path_prefix: str):
    return (rows | "FlattenRows" >> beam.FlatMap(lambda rs: rs)
            | "WriteTable" >> beam.io.WriteToParquet(path_prefix, instance_table.SCHEMA, file_name_suffix=".parquet",
                                                     codec="zstd"))


def read_instance_table(p, table_dir: str):
    """Instance table -> per-image row lists (grouped by image path)."""
    pattern = fileio.join(table_dir, instance_table.FILE_GLOB)
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise SystemExit(f"{table_dir}: no instance table files ({instance_table.FILE_GLOB})")
    with fileio.open_read(matches[0].path) as f:
        instance_table.check_schema(pq.read_schema(pa.BufferReader(f.read())), matches[0].path)
    return (p | "ReadTable" >> beam.io.ReadFromParquet(pattern)
            | "KeyByImage" >> beam.Map(lambda r: (r["image_path"], r))
            | "GroupByImage" >> beam.GroupByKey()
            | "RowLists" >> beam.MapTuple(lambda _, rs: sorted(rs, key=lambda r: r["instance_id"])))
