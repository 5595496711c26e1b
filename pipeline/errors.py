"""The error type per-element functions raise for a bad record; jobs turn it into a rejected row."""

from __future__ import annotations


class RecordError(Exception):
    """A record that cannot go into the output. `reason` is one of schemas.rejected's reasons;
    `kind` is "rejected" (bad input) or "filtered" (a deliberate filter, e.g. too small at R)."""

    def __init__(self, reason: str, detail: str = "", kind: str = "rejected"):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.kind = kind

    def __reduce__(self):  # keep `kind` when Beam pickles the exception between processes
        return (type(self), (self.reason, self.detail, self.kind))


def rejection(record_id: str, source: str, stage: str, reason: str, detail: str = "", input: str = "",
              kind: str = "rejected") -> dict:
    """A row of rejected.parquet (schemas.rejected.SCHEMA)."""
    return {
        "record_id": str(record_id),
        "source": source,
        "stage": stage,
        "kind": kind,
        "reason": reason,
        "detail": detail[:1000],
        "input": input,
    }
