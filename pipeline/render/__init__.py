"""Per-element rendering: the training crop, the mask ladder, sample bytes (plain functions, no Beam transforms)."""
