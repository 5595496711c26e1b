"""Mask schedule: the precision levels s = 0 (exact) ... s = S (box).

Each level is one of
  {"type": "exact"}
  {"type": "blur", "sigma": X, "kernel": K, "units": "relative" | "pixels", "threshold": T}
  {"type": "box"}
With units "relative", sigma and kernel are fractions of the longer side of the object's box at crop
resolution; with "pixels" they are absolute crop pixels. kernel 0 means "derived from sigma"
(2 * ceil(3 sigma) + 1). The blurred mask is binarised at `threshold` (0..1), joined with the level
below so the ladder nests, and clipped to the box.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

NAME = "smartbrush.mask_schedule"
VERSION = 1

LEVEL_TYPES = ("exact", "blur", "box")
UNITS = ("relative", "pixels")


@dataclass(frozen=True)
class Level:
    type: str
    sigma: float = 0.0
    kernel: float = 0.0
    units: str = "relative"
    threshold: float = 0.0


@dataclass(frozen=True)
class MaskSchedule:
    id: str
    levels: tuple[Level, ...]
    description: str = ""

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def levels_as_dicts(self) -> list[dict]:
        return [{"type": lv.type, "sigma": lv.sigma, "kernel": lv.kernel, "units": lv.units, "threshold": lv.threshold}
                if lv.type == "blur" else {"type": lv.type} for lv in self.levels]

    @property
    def hash(self) -> str:
        """sha256 of the levels' canonical JSON: two schedules that render alike hash alike."""
        blob = json.dumps(self.levels_as_dicts(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_json(self) -> dict:
        return {"id": self.id, "hash": self.hash, "levels": self.levels_as_dicts()}


def from_dict(data: dict, where: str = "schedule") -> MaskSchedule:
    """Validate and build a schedule; unknown keys and malformed ladders are errors."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a mask schedule is a mapping, got {type(data).__name__}")
    unknown = set(data) - {"id", "levels", "description", "schema", "schema_version", "hash"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if "schema_version" in data and data["schema_version"] != VERSION:
        raise ValueError(f"{where}: schedule version {data['schema_version']}, this smartbrush reads {VERSION}")
    raw_levels = data.get("levels")
    if not isinstance(raw_levels, list) or len(raw_levels) < 2:
        raise ValueError(f"{where}: 'levels' must list at least 2 levels (exact ... box)")
    levels = []
    for i, raw in enumerate(raw_levels):
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: level {i} must be a mapping")
        bad = set(raw) - {"type", "sigma", "kernel", "units", "threshold"}
        if bad:
            raise ValueError(f"{where}: level {i}: unknown keys {sorted(bad)}")
        t = raw.get("type")
        if t not in LEVEL_TYPES:
            raise ValueError(f"{where}: level {i}: type must be one of {LEVEL_TYPES}, got {t!r}")
        if t == "blur":
            lv = Level(
                type="blur",
                sigma=float(raw.get("sigma", 0.0)),
                kernel=float(raw.get("kernel", 0.0)),
                units=str(raw.get("units", "relative")),
                threshold=float(raw.get("threshold", 0.05)),
            )
            if lv.units not in UNITS:
                raise ValueError(f"{where}: level {i}: units must be one of {UNITS}")
            if lv.sigma <= 0:
                raise ValueError(f"{where}: level {i}: blur needs sigma > 0")
            if lv.kernel < 0 or not 0.0 < lv.threshold < 1.0:
                raise ValueError(f"{where}: level {i}: kernel >= 0 and 0 < threshold < 1 required")
        else:
            extra = set(raw) - {"type"}
            if extra:
                raise ValueError(f"{where}: level {i}: {t} takes no parameters, got {sorted(extra)}")
            lv = Level(type=t)
        levels.append(lv)
    if levels[0].type != "exact":
        raise ValueError(f"{where}: level 0 must be 'exact'")
    if levels[-1].type != "box":
        raise ValueError(f"{where}: the last level must be 'box'")
    if any(lv.type != "blur" for lv in levels[1:-1]):
        raise ValueError(f"{where}: levels between the first and the last must be 'blur'")
    sched_id = str(data.get("id") or "")
    if not sched_id:
        raise ValueError(f"{where}: 'id' is required")
    return MaskSchedule(id=sched_id, levels=tuple(levels), description=str(data.get("description", "")))
