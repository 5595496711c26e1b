"""Thin Beam DoFns and PTransforms over the per-element functions, and the per-shard writer they run."""
