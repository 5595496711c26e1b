"""Per-element rendering: decode, masks, crop windows, the mask ladder, sample bytes (no Beam)."""
