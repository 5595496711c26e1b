"""Folding img2dataset's per-shard output (tar, parquet, _stats.json) into our counts and rejected rows."""

from __future__ import annotations

import re
from collections import Counter

from smartbrush.pipeline.errors import rejection
from smartbrush.pipeline.sources.laion_filter import SOURCE, SOURCE_FILE, SOURCE_ROW, STAGE, record_id

OOM_SHARD_COUNT = 5  # img2dataset's shard names: 00000.tar, 00000.parquet, 00000_stats.json

# img2dataset's error messages (urllib's, or its resizer's) -> our reason, first match wins.
_ERROR_CLASSES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p, re.IGNORECASE), r) for p, r in (
    (r"HTTP Error (\d{3})", r"http_\1"),
    (r"timed out|timeout", "timeout"),
    (r"IncompleteRead", "truncated"),
    (r"Image decoding error", "image_undecodable"),  # HTML, a truncated or a corrupt image: cv2 cannot tell
    (r"image too small", "image_too_small"),
    (r"image area too large", "image_area_too_large"),
    (r"aspect ratio too large", "aspect_ratio_too_large"),
    (r"hash mismatch", "hash_mismatch"),
    (r"X-Robots-Tag", "disallowed_by_robots"),
    (r"Connection refused", "connection_refused"),
    (r"Name or service not known|nodename nor servname|Temporary failure in name resolution|getaddrinfo",
     "dns_error"),
    (r"SSL|CERTIFICATE", "ssl_error"),
    (r"Remote end closed connection|Connection reset|Connection aborted", "connection_closed"),
    (r"unknown url type|no host given|URL can't contain control characters|Invalid URL", "invalid_url"),
))
UNKNOWN_ERROR = "download_error"
NOT_RECORDED = "not_recorded"  # a row img2dataset dropped without a status (should not happen)


def error_class(message: str | None) -> str:
    """Our reason for one img2dataset error message: http_404, timeout, truncated, image_undecodable, ..."""
    if not message:
        return UNKNOWN_ERROR
    for pattern, reason in _ERROR_CLASSES:
        m = pattern.search(message)
        if m:
            return m.expand(reason)
    return UNKNOWN_ERROR


def shard_stem(shard_id: int) -> str:
    return f"{shard_id:0{OOM_SHARD_COUNT}d}"


def failed_row(row: dict) -> dict:
    """rejected.parquet row for one img2dataset parquet row that did not reach the tar."""
    message = row.get("error_message") or f"status {row.get('status')!r} without a sample in the tar"
    path, index = row[SOURCE_FILE], int(row[SOURCE_ROW])
    return rejection(record_id(path, index), SOURCE, STAGE, error_class(row.get("error_message")),
                     f"{message} ({row.get('url')})", path)


def fold_shard(rows: list[dict], tar_keys: set[str]) -> tuple[int, list[dict]]:
    """(samples written, rejected rows) of one shard from img2dataset's per-row parquet and the tar's keys.

    A row is written exactly when its key is in the tar; every other row is rejected with its error class.
    Raises ValueError when the tar holds keys no row accounts for (a corrupt or foreign tar)."""
    written, rejected, seen = 0, [], set()
    for row in rows:
        if row["key"] in tar_keys:
            written += 1
            seen.add(row["key"])
        else:
            rejected.append(failed_row(row))
    extra = tar_keys - seen
    if extra:
        raise ValueError(f"tar holds {len(extra)} samples no parquet row accounts for, e.g. {sorted(extra)[:3]}")
    return written, rejected


def unrecorded_rows(expected: list[tuple[str, int]], rows: list[dict]) -> list[dict]:
    """Rejected rows for download-list entries that img2dataset's parquet does not mention."""
    recorded = {(r[SOURCE_FILE], int(r[SOURCE_ROW])) for r in rows}
    return [rejection(record_id(path, i), SOURCE, STAGE, NOT_RECORDED, "no row in img2dataset's shard parquet",
                      path) for path, i in expected if (path, i) not in recorded]


def fold_stats(stats: list[dict]) -> dict:
    """img2dataset's _stats.json files summed: {"count", "successes", "failed": {reason: n}}."""
    failed: Counter = Counter()
    count = successes = 0
    for s in stats:
        count += int(s["count"])
        successes += int(s["successes"])
        for message, n in s.get("status_dict", {}).items():
            if message != "success":
                failed[error_class(message)] += int(n)
    return {"count": count, "successes": successes, "failed": dict(sorted(failed.items()))}
