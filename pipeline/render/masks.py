"""The mask names render/ modules and their tests import from here; the masks' home is
pipeline/imaging/masks.py (shared with sources/ and caption/)."""

from smartbrush.pipeline.imaging.masks import (Box, mask_box, mask_to_rle, openimages_mask_to_rle,  # noqa: F401
                                               rle_area_and_box, rle_to_mask, segmentation_to_rle)
