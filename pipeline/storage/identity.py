"""An output folder's identity (schemas/output_identity.py): make it, and claim a folder with it."""

from __future__ import annotations

import json

from smartbrush import __version__
from smartbrush.pipeline.storage import fileio
from smartbrush.schemas import instance_table, output_identity, rejected, shard_sample
from smartbrush.schemas import manifest as manifest_schema


class IdentityMismatch(SystemExit):
    """The folder holds (part of) an output whose bytes would differ from this run's."""


def make_identity(kind: str, config: dict, schedule: dict | None = None, captioner: dict | None = None,
                  inputs: list[dict] = ()) -> dict:
    return {
        "schema": output_identity.NAME,
        "schema_version": output_identity.VERSION,
        "kind": kind,
        "tool_version": __version__,
        "formats": {manifest_schema.NAME: manifest_schema.VERSION, shard_sample.NAME: shard_sample.VERSION,
                    instance_table.NAME: instance_table.VERSION, rejected.NAME: rejected.VERSION},
        "config": config,
        "mask_schedule_hash": (schedule or {}).get("hash"),
        "captioner": ({k: captioner.get(k) for k in ("model", "revision", "settings")} if captioner else None),
        "inputs": sorted(i["sha256"] for i in inputs),
    }


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def differences(old: dict, new: dict) -> list[str]:
    """One line per differing key, naming it with both values (config keys in dotted form)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            lines += [f"{key}.{line}" for line in differences(a, b)]
        else:
            lines.append(f"{key}: folder has {_short(a)}, this run has {_short(b)}")
    return lines


def claim_output(out_dir: str, identity: dict, path: str | None = None) -> None:
    """Write identity.json into a new folder, or check that an existing folder's matches. `path`
    overrides where it lives (LAION sets: img2dataset reads every *.json at the folder's top)."""
    fileio.makedirs(out_dir)
    path = path or fileio.join(out_dir, output_identity.FILE_NAME)
    if fileio.exists(path):
        try:
            old = json.loads(fileio.read_bytes(path))
        except ValueError:
            old = {}
        diff = differences(old, identity)
        if diff:
            raise IdentityMismatch(
                f"{out_dir} holds output whose bytes would differ from this run's; it differs in:\n  "
                + "\n  ".join(diff) + "\nUse a new --out, or delete the folder to rebuild.")
        return
    data = (json.dumps(identity, sort_keys=True, indent=1) + "\n").encode()
    fileio.atomic_write_bytes(path, data)
