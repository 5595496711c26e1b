"""Files, shards, manifests and rejected tables: what lands on disk and how it is read back."""
