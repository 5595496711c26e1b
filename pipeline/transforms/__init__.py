"""Thin Beam DoFns and PTransforms over the per-element functions."""
