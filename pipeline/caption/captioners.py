"""Captioners: one interface for the class-label fallback and for model captioners (BLIP)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod


def caption_record(text: str, model: str, revision: str = "", settings: dict | None = None) -> dict:
    """One entry of the instance table's `captions` list (schemas.instance_table.CAPTION_TYPE)."""
    return {"text": text, "model": model, "revision": revision,
            "settings": json.dumps(settings or {}, sort_keys=True, separators=(",", ":"))}


def has_caption_by(row: dict, record: dict) -> bool:
    """Whether `row` holds a caption by the model and settings of caption record `record`."""
    return any((c["model"], c["revision"], c["settings"]) == (record["model"], record["revision"], record["settings"])
               for c in row.get("captions") or [])


def add_caption(row: dict, caption: dict) -> dict:
    """A copy of `row` with `caption` added; a caption by the same model and settings is replaced,
    captions by other models are kept."""
    kept = [c for c in row.get("captions") or []
            if (c["model"], c["revision"], c["settings"]) != (caption["model"], caption["revision"], caption["settings"])]
    return {**row, "captions": kept + [caption]}


class Captioner(ABC):
    """Captions instances. `needs_image` captioners receive each instance's local crop."""

    name: str = ""
    needs_image: bool = False

    @abstractmethod
    def caption_rows(self, rows: list[dict], crops: list | None = None) -> list[dict | None]:
        """One caption record (or None: no usable caption) per row, in order."""


class LabelCaptioner(Captioner):
    """The class name as the caption: the paper's fallback text, and the default."""

    name = "label"

    def caption_rows(self, rows: list[dict], crops: list | None = None) -> list[dict | None]:
        return [caption_record(r["label"], "label") for r in rows]
