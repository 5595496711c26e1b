"""One shard of `smartbrush remask`: the mask ladder of every sample re-rendered with a new
schedule from its s = 0 mask (levels whose definition did not change are copied), written as a v2
sample (one `levels.png` level map); every other member (image, captions, metadata) kept byte for
byte. Reads v1 (one PNG per level) and v2 samples.

Plain functions (no Beam): the job in pipeline/commands/remask.py runs remask_shard once per input
shard.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from smartbrush.pipeline.errors import RecordError, rejection
from smartbrush.pipeline.render.ladder import render_region_map, unchanged_levels
from smartbrush.pipeline.imaging.masks import mask_box
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.shards import write_shard
from smartbrush.schemas import mask_schedule, shard_sample
from smartbrush.schemas.files import digest_bytes
from smartbrush.schemas.level_map import (check_level_map, decode_level_map_box_rows, decode_level_map_rows,
                                          encode_level_map_box)
from smartbrush.schemas.manifest import shard_info, shard_problem
from smartbrush.schemas.mask_schedule import MaskSchedule
from smartbrush.schemas.shard_sample import decode_mask_png, encode_json
from smartbrush.schemas.shard_tar import read_samples, sample_keys

STAGE = "remask"
# Rejection reasons of this stage (beside "mask_missing", "mask_unreadable", "mask_size_mismatch"
# and "empty_mask" from schemas.rejected).
SHARD_MISSING = "shard_missing"
SHARD_CORRUPT = "shard_corrupt"
SAMPLE_INVALID = "sample_invalid"
# v2 json keys a sample converted from v1 cannot know (remask reads no source image): null.
V2_KEYS_UNKNOWN_FROM_V1 = ("image_sha256", "crop_policy")


@dataclass
class ShardResult:
    """What one input shard became: the output shard's info (None when nothing was written),
    the rejected rows, how many samples the input held, and whether the shard was written now."""

    info: dict | None
    rejected: list[dict] = field(default_factory=list)
    inputs: int = 0
    written_now: bool = False


def shard_rejections(name: str, data: bytes | None, expected_samples: int, reason: str, detail: str,
                     input_path: str) -> list[dict]:
    """One row per sample of a shard that cannot be used at all. The manifest says how many samples
    it held; those whose key can no longer be read get the id "<shard name>#<index>"."""
    keys = sample_keys(data, tolerant=True)[:expected_samples] if data else []
    keys += [f"{name}#{i:06d}" for i in range(len(keys), expected_samples)]
    return [rejection(k, "", STAGE, reason, detail, input_path) for k in keys]


def error_text(e: Exception) -> str:
    """An exception as rejection detail, without memory addresses (rejected.parquet is deterministic)."""
    message = e.args[0] if len(e.args) > 1 and isinstance(e.args[0], str) else str(e)
    return f"{type(e).__name__}: " + re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", message).strip(" @")


def new_meta(meta: dict, schedule: MaskSchedule) -> dict:
    """The output sample's json: the input's with only the schedule replaced. A v1 input also
    becomes v2: `mask_keys` is dropped and the v2 keys it cannot know (remask reads no source image)
    are null."""
    out = {**meta, "mask_schedule": _schedule_json(schedule)}
    if meta.get("schema_version") != shard_sample.VERSION:
        out.pop("mask_keys", None)
        out["schema_version"] = shard_sample.VERSION
        for key in V2_KEYS_UNKNOWN_FROM_V1:
            out.setdefault(key, None)
    return out


_SCHEDULE_KEY = '"mask_schedule":'


def new_json(raw: bytes, meta: dict, schedule: MaskSchedule) -> bytes:
    """The output sample's json bytes: the input's, with the top-level mask_schedule value's bytes
    replaced by the new schedule's. On the compact, sorted json smartbrush writes this equals
    encode_json(new_meta(meta, schedule)), at a fraction of the cost. A v1 json, or one where the
    key is not found exactly once right after '{' or ',' (indented json, say) or its value there is
    not meta's, is re-encoded from new_meta."""
    if meta.get("schema_version") == shard_sample.VERSION:
        text = raw.decode("utf-8")
        at = text.find(_SCHEDULE_KEY)
        if at > 0 and text[at - 1] in "{," and text.find(_SCHEDULE_KEY, at + 1) < 0:
            start = at + len(_SCHEDULE_KEY)
            try:
                value, end = _DECODER.raw_decode(text, start)
            except json.JSONDecodeError:
                return encode_json(new_meta(meta, schedule))
            if value == meta.get("mask_schedule"):
                return (text[:start] + _schedule_text(schedule) + text[end:]).encode("utf-8")
    return encode_json(new_meta(meta, schedule))


_DECODER = json.JSONDecoder()


# Once per schedule, not per sample (callers do not modify the result).
@functools.lru_cache(maxsize=64)
def _schedule_json(schedule: MaskSchedule) -> dict:
    return schedule.to_json()


@functools.lru_cache(maxsize=64)
def _schedule_text(schedule: MaskSchedule) -> str:
    return encode_json(_schedule_json(schedule)).decode("utf-8")


# The schedules of the input samples by their json's "hash" (a set has one or a few): an entry is
# used only when its levels equal the sample's, so a json whose hash does not match its levels
# gets its own schedule.
_INPUT_SCHEDULES: dict[str, MaskSchedule] = {}


def input_schedule(meta: dict) -> MaskSchedule:
    """The schedule a sample was rendered with (from its json)."""
    value = meta.get("mask_schedule")
    levels = value.get("levels") if isinstance(value, dict) else None
    key = value.get("hash") if isinstance(value, dict) else None
    known = _INPUT_SCHEDULES.get(key) if isinstance(key, str) else None
    if known is not None and known.levels_as_dicts() == levels:
        return known
    try:
        schedule = mask_schedule.from_dict({"id": "input", "levels": levels}, "the sample's mask_schedule")
    except (ValueError, TypeError) as e:
        raise RecordError(SAMPLE_INVALID, str(e)) from None
    if schedule.num_levels > shard_sample.MAX_LEVELS:
        raise RecordError(SAMPLE_INVALID, f"{schedule.num_levels} levels, at most {shard_sample.MAX_LEVELS}")
    if isinstance(key, str) and len(_INPUT_SCHEDULES) < 64:
        _INPUT_SCHEDULES.setdefault(key, schedule)
    return schedule


def _meta(sample: dict) -> dict:
    raw = sample.get(shard_sample.META_EXT)
    if raw is None:
        raise RecordError(SAMPLE_INVALID, f"no {shard_sample.META_EXT} member")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(SAMPLE_INVALID, f"{shard_sample.META_EXT} is not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("schema") != shard_sample.NAME:
        raise RecordError(SAMPLE_INVALID, f"not a {shard_sample.NAME} sample")
    if meta.get("schema_version") not in shard_sample.READABLE_VERSIONS:
        raise RecordError(SAMPLE_INVALID, f"sample schema version {meta.get('schema_version')!r}, this smartbrush "
                                          f"reads {', '.join(map(str, shard_sample.READABLE_VERSIONS))}")
    if not isinstance(meta.get("resolution"), int):
        raise RecordError(SAMPLE_INVALID, f"resolution {meta.get('resolution')!r} is not an integer")
    if meta["schema_version"] == 1:
        keys = meta.get("mask_keys")
        if not isinstance(keys, list) or len(keys) < 2 or keys != shard_sample.mask_exts(len(keys)):
            raise RecordError(SAMPLE_INVALID, f"mask_keys {keys!r} is not [mask_s0.png, ..., mask_sS.png]")
    return meta


def _decode(sample: dict, member: str, decode, resolution: int):
    if member not in sample:
        raise RecordError("mask_missing", f"no {member} member")
    try:
        decoded = decode(sample[member])
    except Exception as e:  # PIL and OpenCV raise many types for a damaged PNG
        raise RecordError("mask_unreadable", f"{member}: {error_text(e)}") from None
    array = decoded[0] if isinstance(decoded, tuple) else decoded
    if array.shape != (resolution, resolution):
        raise RecordError("mask_size_mismatch", f"{member} is {array.shape[1]}x{array.shape[0]}, "
                                                f"resolution {resolution}")
    return decoded


def _json_box(meta: dict, resolution: int) -> tuple[int, int, int, int] | None:
    box = meta.get("box_crop_xyxy")
    if (isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box)
            and 0 <= box[0] < box[2] <= resolution and 0 <= box[1] < box[3] <= resolution):
        return tuple(box)
    return None


def _is_ladder_of_box(box_rows: np.ndarray, box, num_levels: int) -> bool:
    """Whether the map's box rows (every other row being OUTSIDE) are OUTSIDE exactly outside `box`
    and a level < num_levels inside it, and the box is the tight box of level 0 (a 0 on each of its
    edges). OpenCV's reductions: numpy's cost about 5 us each on arrays this small."""
    x0, y0, x1, y1 = box
    if box_rows.shape[0] != y1 - y0:
        return False
    region = box_rows[:, x0:x1]
    if cv2.minMaxLoc(region)[1] >= num_levels:  # so OUTSIDE (255) appears nowhere in the box
        return False
    for side in (box_rows[:, :x0], box_rows[:, x1:]):
        if side.size and cv2.minMaxLoc(side)[0] != shard_sample.OUTSIDE:
            return False
    h, w = region.shape
    return not (cv2.countNonZero(region[0]) == w or cv2.countNonZero(region[-1]) == w
                or cv2.countNonZero(region[:, 0]) == h or cv2.countNonZero(region[:, -1]) == h)


def _input_levels(sample: dict, meta: dict, old: MaskSchedule,
                  needed: set[int]) -> tuple[tuple[int, int, int, int], np.ndarray, tuple[int, int]]:
    """(box of the exact mask, the box region of a level map in which level 0 is the exact mask and
    `map <= j` is the input's level j for every j in `needed`, the map's (height, width))."""
    resolution = meta["resolution"]
    if meta["schema_version"] == 1:
        keys = meta["mask_keys"]
        if len(keys) != old.num_levels:
            raise RecordError(SAMPLE_INVALID, f"{len(keys)} mask_keys for a schedule of {old.num_levels} levels")
        exact = _decode(sample, keys[0], decode_mask_png, resolution)
        box = mask_box(exact)
        if box[2] == box[0]:
            raise RecordError("empty_mask", f"{keys[0]} is empty")
        old_map = np.full(exact.shape, shard_sample.OUTSIDE, np.uint8)
        for j in sorted(needed, reverse=True):  # smallest level last: each pixel keeps its smallest
            old_map[_decode(sample, keys[j], decode_mask_png, resolution)] = j
        old_map[exact] = 0
        return box, _region(old_map, box), old_map.shape
    box = _json_box(meta, resolution)
    fast = decode_level_map_box_rows(sample[shard_sample.LEVELS_EXT]) if shard_sample.LEVELS_EXT in sample else None
    if fast is not None and box is not None and fast[2] == (resolution, resolution) and fast[1] == box[1]:
        # Our own layout, only the box rows inflated: the usual case, checked on those rows alone.
        if _is_ladder_of_box(fast[0], box, old.num_levels):
            return box, fast[0][:, box[0]:box[2]], fast[2]
    old_map, rows = _decode(sample, shard_sample.LEVELS_EXT, decode_level_map_rows, resolution)
    try:
        check_level_map(old_map, old.num_levels, shard_sample.LEVELS_EXT)
    except ValueError as e:
        raise RecordError("mask_unreadable", str(e)) from None
    box = mask_box(old_map == 0)
    if box[2] == box[0]:
        raise RecordError("empty_mask", f"{shard_sample.LEVELS_EXT} has no level-0 pixel")
    if mask_rows(old_map) != (box[1], box[3]) or not _is_ladder_of_box(old_map[box[1]:box[3]], box, old.num_levels):
        raise RecordError("mask_unreadable", f"{shard_sample.LEVELS_EXT}: the box level is not the box of level 0")
    return box, _region(old_map, box), old_map.shape


def _region(level_map: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return level_map[y0:y1, x0:x1]


def mask_rows(level_map: np.ndarray) -> tuple[int, int]:
    """(y0, y1): the rows of a level map that hold anything but OUTSIDE."""
    used = np.flatnonzero((level_map != shard_sample.OUTSIDE).any(axis=1))
    return (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)


def remask_sample(sample: dict, schedule: MaskSchedule) -> dict[str, bytes]:
    """The members of one raw v1 or v2 sample (without `__key__`) under `schedule`, as a v2 sample.

    Only the masks are decoded. Levels whose definition is the same in the input's schedule (the
    exact mask, the box, and any blur level made of the same blurs, see ladder.unchanged_levels) are
    copied from the input; the others are rendered from the s = 0 mask. All the mask work happens in
    the box (the box rows for the PNG). Every other member is kept byte for byte; the json changes
    in `mask_schedule` only (and, from v1, in its version keys)."""
    meta = _meta(sample)
    old = input_schedule(meta)
    copied = unchanged_levels(old, schedule)
    (x0, y0, x1, y1), old_region, (height, width) = _input_levels(sample, meta, old, set(copied.values()))
    if meta["schema_version"] == shard_sample.VERSION and old.levels == schedule.levels:
        levels_png = sample[shard_sample.LEVELS_EXT]  # the same ladder: the same bytes
    else:
        region_map = render_region_map(old_region == 0, schedule, copy=(old_region, copied))
        levels_png = encode_level_map_box(region_map, (x0, y0, x1, y1), height, width)
    old_masks = set(meta["mask_keys"]) if meta["schema_version"] == 1 else {shard_sample.LEVELS_EXT}
    members = {k: v for k, v in sample.items() if not k.startswith("__") and k not in old_masks}
    members[shard_sample.META_EXT] = new_json(sample[shard_sample.META_EXT], meta, schedule)
    members[shard_sample.LEVELS_EXT] = levels_png
    return members


def remask_samples(samples: list[dict], schedule: MaskSchedule,
                   input_path: str) -> tuple[list[tuple[str, dict]], list[dict]]:
    """(key, members) pairs for the samples that remask, rejection rows for the others."""
    out, rejected = [], []
    for sample in samples:
        key = sample["__key__"]
        try:
            out.append((key, remask_sample(sample, schedule)))
        except RecordError as e:
            source = _source_of(sample)
            rejected.append(rejection(key, source, STAGE, e.reason, e.detail, input_path))
    return out, rejected


def _source_of(sample: dict) -> str:
    try:
        return str(shard_sample.parse_json(sample.get(shard_sample.META_EXT)).get("source", ""))
    except Exception:  # a json that is not JSON or not an object: the rejection says why
        return ""


def read_input_shard(in_dir: str, entry: dict) -> tuple[list[dict] | None, list[dict]]:
    """The samples of an input shard checked against its manifest entry, or (None, rejections of
    all its samples) when the file is missing, damaged or not the one the manifest describes."""
    name, expected = entry["name"], int(entry["samples"])
    path = fileio.join(in_dir, name)
    try:
        data = fileio.read_bytes(path)
    except (FileNotFoundError, OSError) as e:
        if not fileio.exists(path):
            return None, shard_rejections(name, None, expected, SHARD_MISSING, path, path)
        return None, shard_rejections(name, None, expected, SHARD_CORRUPT, error_text(e), path)
    problem = shard_problem(data, entry)
    if problem:
        return None, shard_rejections(name, data, expected, SHARD_CORRUPT, problem, path)
    try:
        samples = read_samples(data, path)
    except Exception as e:  # tarfile raises several types for a damaged archive
        return None, shard_rejections(name, data, expected, SHARD_CORRUPT, error_text(e), path)
    if len(samples) != expected:
        detail = f"{len(samples)} samples, the input manifest says {expected}"
        return None, shard_rejections(name, data, expected, SHARD_CORRUPT, detail, path)
    return samples, []


def _resume(out_path: str, name: str, samples: list[dict], schedule: MaskSchedule,
            input_path: str) -> ShardResult:
    """An output shard from an earlier, interrupted run: keep it, and re-derive the rejections of
    the input samples it lacks (cheap: only those samples are remasked)."""
    data = fileio.read_bytes(out_path)
    try:
        done = read_samples(data, out_path)
    except Exception as e:
        raise RuntimeError(f"{out_path}: unreadable output shard from an earlier run ({e}); delete it and "
                           "re-run") from None
    first = json.loads(done[0][shard_sample.META_EXT]) if done else {}
    if done and first.get("mask_schedule", {}).get("hash") != schedule.hash:
        raise RuntimeError(f"{out_path} was written with another mask schedule; use a new --out, or delete the "
                           "folder to remask again")
    if done and first.get("schema_version") != shard_sample.VERSION:
        raise RuntimeError(f"{out_path} holds sample format v{first.get('schema_version')}, this smartbrush writes "
                           f"v{shard_sample.VERSION}; delete it, or the folder, and re-run")
    done_keys = {s["__key__"] for s in done}
    missing = [s for s in samples if s["__key__"] not in done_keys]
    remasked, rejected = remask_samples(missing, schedule, input_path)
    if remasked or len(done_keys) + len(rejected) != len(samples):
        raise RuntimeError(f"{out_path} does not match its input shard {input_path}; delete it and re-run")
    digest = digest_bytes(data)
    info = shard_info(name, len(done), digest)
    return ShardResult(info, rejected, len(samples), False)


def remask_shard(in_dir: str, out_dir: str, entry: dict, schedule: MaskSchedule) -> ShardResult:
    """Remask one input shard (its input-manifest entry) into a shard of the same name in out_dir.

    Atomic and resumable: an output shard that already exists is kept."""
    name = entry["name"]
    samples, rejected = read_input_shard(in_dir, entry)
    if samples is None:
        return ShardResult(None, rejected, int(entry["samples"]), False)
    input_path = fileio.join(in_dir, name)
    out_path = fileio.join(out_dir, name)
    if fileio.exists(out_path):
        return _resume(out_path, name, samples, schedule, input_path)
    remasked, rejected = remask_samples(samples, schedule, input_path)
    if not remasked:
        return ShardResult(None, rejected, len(samples), False)
    info, written_now = write_shard(out_dir, name, remasked)
    return ShardResult(info, rejected, len(samples), written_now)
