"""Input readers: COCO, OpenImages and LAION records to instance rows (no Beam)."""
