"""One shard of `smartbrush remask`: every mask level recomputed from each sample's s = 0 mask
with a new schedule; every other member (image, captions, metadata) kept byte for byte.

Plain functions (no Beam): the job in pipeline/remask.py runs remask_shard once per input shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass, field

import webdataset as wds

from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.errors import RecordError, rejection
from smartbrush.pipeline.render.ladder import render_ladder
from smartbrush.pipeline.render.samples import decode_mask_png, encode_json, encode_mask_png
from smartbrush.pipeline.storage.shards import shard_info, write_shard
from smartbrush.schemas import shard_sample
from smartbrush.schemas.mask_schedule import MaskSchedule

STAGE = "remask"
# Rejection reasons of this stage (beside "mask_missing", "mask_unreadable", "mask_size_mismatch"
# and "empty_mask" from schemas.rejected).
SHARD_MISSING = "shard_missing"
SHARD_CORRUPT = "shard_corrupt"
SAMPLE_INVALID = "sample_invalid"


@dataclass
class ShardResult:
    """What one input shard became: the output shard's info (None when nothing was written),
    the rejected rows, how many samples the input held, and whether the shard was written now."""

    info: dict | None
    rejected: list[dict] = field(default_factory=list)
    inputs: int = 0
    written_now: bool = False


def parse_tar(data: bytes, url: str) -> list[dict]:
    """Raw samples of tar bytes, grouped the way pipeline.shards.read_shard groups them."""
    stream = wds.tariterators.tar_file_expander([{"stream": io.BytesIO(data), "url": url}])
    return list(wds.tariterators.group_by_keys(stream))


def readable_keys(data: bytes) -> list[str]:
    """Sample keys of the member headers that can still be read from a damaged tar, in order."""
    keys: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                key = member.name.split(".", 1)[0]  # our keys hold no dots
                if not keys or keys[-1] != key:
                    keys.append(key)
    except (tarfile.TarError, OSError, EOFError):
        pass
    return keys


def shard_rejections(name: str, data: bytes | None, expected_samples: int, reason: str, detail: str,
                     input_path: str) -> list[dict]:
    """One row per sample of a shard that cannot be used at all. The manifest says how many samples
    it held; those whose key can no longer be read get the id "<shard name>#<index>"."""
    keys = readable_keys(data)[:expected_samples] if data else []
    keys += [f"{name}#{i:06d}" for i in range(len(keys), expected_samples)]
    return [rejection(k, "", STAGE, reason, detail, input_path) for k in keys]


def error_text(e: Exception) -> str:
    """An exception as rejection detail, without memory addresses (rejected.parquet is deterministic)."""
    message = e.args[0] if len(e.args) > 1 and isinstance(e.args[0], str) else str(e)
    return f"{type(e).__name__}: " + re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", message).strip(" @")


def new_meta(meta: dict, schedule: MaskSchedule) -> dict:
    """The sample json with only the schedule and the mask member names changed."""
    return {**meta, "mask_schedule": schedule.to_json(), "mask_keys": shard_sample.mask_exts(schedule.num_levels)}


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
    if meta.get("schema_version") != shard_sample.VERSION:
        raise RecordError(SAMPLE_INVALID, f"sample schema version {meta.get('schema_version')!r}, "
                                          f"this smartbrush reads {shard_sample.VERSION}")
    keys = meta.get("mask_keys")
    if not isinstance(keys, list) or len(keys) < 2 or keys != shard_sample.mask_exts(len(keys)):
        raise RecordError(SAMPLE_INVALID, f"mask_keys {keys!r} is not [mask_s0.png, ..., mask_sS.png]")
    return meta


def remask_sample(sample: dict, schedule: MaskSchedule) -> dict[str, bytes]:
    """The members of one raw sample (without `__key__`) under `schedule`.

    Only the s = 0 mask is decoded. Its PNG bytes are kept as they are (re-encoding the decoded
    mask gives the same bytes; copying is cheaper); levels 1..S are rendered from it."""
    meta = _meta(sample)
    exact_key = meta["mask_keys"][0]
    if exact_key not in sample:
        raise RecordError("mask_missing", f"no {exact_key} member")
    try:
        exact = decode_mask_png(sample[exact_key])
    except Exception as e:  # PIL raises many types for a damaged PNG
        raise RecordError("mask_unreadable", f"{exact_key}: {error_text(e)}") from None
    resolution = meta.get("resolution")
    if exact.shape != (resolution, resolution):
        raise RecordError("mask_size_mismatch", f"{exact_key} is {exact.shape[1]}x{exact.shape[0]}, "
                                                f"resolution {resolution}")
    levels = render_ladder(exact, schedule)
    old_masks = set(meta["mask_keys"])
    members = {k: v for k, v in sample.items() if not k.startswith("__") and k not in old_masks}
    members[shard_sample.META_EXT] = encode_json(new_meta(meta, schedule))
    members[shard_sample.mask_ext(0)] = sample[exact_key]
    members.update({shard_sample.mask_ext(s): encode_mask_png(m) for s, m in enumerate(levels) if s > 0})
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
        meta = json.loads(sample[shard_sample.META_EXT])
        return str(meta.get("source", "")) if isinstance(meta, dict) else ""
    except Exception:
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
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or sha != entry["sha256"]:
        detail = (f"{len(data)} bytes, sha256 {sha[:12]}; the input manifest says {entry['bytes']} bytes, "
                  f"sha256 {entry['sha256'][:12]}")
        return None, shard_rejections(name, data, expected, SHARD_CORRUPT, detail, path)
    try:
        samples = parse_tar(data, path)
    except Exception as e:  # tarfile and webdataset raise several types for a damaged archive
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
        done = parse_tar(data, out_path)
    except Exception as e:
        raise RuntimeError(f"{out_path}: unreadable output shard from an earlier run ({e}); delete it and "
                           "re-run") from None
    if done and json.loads(done[0][shard_sample.META_EXT]).get("mask_schedule", {}).get("hash") != schedule.hash:
        raise RuntimeError(f"{out_path} was written with another mask schedule; use a new --out, or delete the "
                           "folder to remask again")
    done_keys = {s["__key__"] for s in done}
    missing = [s for s in samples if s["__key__"] not in done_keys]
    remasked, rejected = remask_samples(missing, schedule, input_path)
    if remasked or len(done_keys) + len(rejected) != len(samples):
        raise RuntimeError(f"{out_path} does not match its input shard {input_path}; delete it and re-run")
    info = shard_info(name, len(done), len(data), hashlib.sha256(data).hexdigest())
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
