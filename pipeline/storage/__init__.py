"""Beam-side file access (FileSystems, atomic writes), shard files, and finalize (manifest.json and
rejected.parquet); the formats themselves are in schemas/."""
