"""Captioners (label, BLIP) and their crops (no Beam except the RunInference handler)."""
