"""The image-header name render/'s tests import from here; source images' home is
pipeline/imaging/images.py (shared with sources/ and caption/)."""

from smartbrush.pipeline.imaging.images import read_header  # noqa: F401
