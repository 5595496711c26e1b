"""Corpus-build stages: per-element functions (no Beam import) and the thin Beam jobs that compose them."""
