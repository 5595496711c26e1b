"""Mask members of hand-made samples for tests: v2's level map and v1's one PNG per level."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from smartbrush.schemas import shard_sample
from smartbrush.schemas.level_map import encode_level_map, map_from_levels


def encode_mask_png(mask: np.ndarray) -> bytes:
    """1-bit PNG of one bool mask (a v1 sample's mask member)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_masks(levels: list[np.ndarray]) -> dict[str, bytes]:
    """The v2 mask member of a ladder given as nested bool masks (index = level)."""
    return {shard_sample.LEVELS_EXT: encode_level_map(map_from_levels(levels))}


def encode_masks_v1(levels: list[np.ndarray]) -> dict[str, bytes]:
    """The v1 mask members (one 1-bit PNG per level)."""
    return {shard_sample.mask_ext(s): encode_mask_png(m) for s, m in enumerate(levels)}
