"""identity.json: everything that decides the bytes of an output folder.

Written when a job first claims a folder; a later run into the same folder must present the same
identity, or it is refused with the fields that differ (a resumed run must not mix two builds).
"""

from __future__ import annotations

NAME = "smartbrush.output_identity"
VERSION = 1
FILE_NAME = "identity.json"

# Keys of identity.json. Each is compared on resume; differences are reported by key.
KEYS = (
    "schema",
    "schema_version",
    "kind",  # manifest kind of the folder
    "tool_version",
    "formats",  # {format name: version} of every format the job writes
    "config",  # the resolved job config
    "mask_schedule_hash",  # content hash of the mask schedule (null when none)
    "captioner",  # {"model", "revision", "settings"} (null when the job does not caption)
    "inputs",  # sorted sha256 of every input file (paths are not part of the identity)
)
