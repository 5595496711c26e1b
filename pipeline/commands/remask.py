"""`smartbrush remask`: an inpainting shard set + a new mask schedule -> a new shard set.

One Beam work item per input shard (listed from the input manifest.json); each worker reads its
shard (sample format v1 or v2), renders each sample's ladder with the new schedule from its s = 0
mask, copying the levels whose definition did not change (pipeline/render/remask.py), and writes a
v2 shard of the same name (the DoFn: pipeline/transforms/remask.py). Images, captions and metadata
are not touched; no annotation or source image is read. See docs/remask.md and docs/shard-format.md.
"""

from __future__ import annotations

import argparse
import json
import os

import apache_beam as beam
from apache_beam.runners.runner import PipelineResult

from smartbrush import config as config_mod
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.commands.common import BEAM_FLAGS_HELP, pipeline_options, prepare_output
from smartbrush.flags import parse_job_args
from smartbrush.pipeline.storage.identity import make_identity
from smartbrush.pipeline.transforms.finalize import finalize
from smartbrush.pipeline.transforms.remask import INPUTS, REJECTED, RemaskShardDoFn
from smartbrush.schemas import manifest as manifest_schema


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbrush remask", epilog=BEAM_FLAGS_HELP,
        description="Re-render the mask ladder of an inpainting shard set (sample format v1 or v2) from its s = 0 "
                    "masks with a new schedule (which may change the number of levels S); levels whose definition "
                    "did not change are copied. Writes sample format v2 (one levels.png level map per sample). "
                    "Images, captions and metadata are copied byte for byte; shards keep their names. Writes "
                    "shards, manifest.json (with both schedules and the input manifest's sha256), rejected.parquet "
                    "and config.yaml.")
    parser.add_argument("--shards", required=True, help="input shard set folder (holding manifest.json)")
    parser.add_argument("--schedule", required=True, help="new mask schedule: preset "
                        f"({', '.join(config_mod.list_presets('schedules'))}) or YAML file")
    parser.add_argument("--out", required=True, help="output folder (any Beam path); not the input folder")
    return parser


def read_input_manifest(shards_dir: str) -> tuple[dict, bytes]:
    """The input set's manifest and its exact bytes; a clear SystemExit when it is not a finished,
    readable inpainting shard set."""
    path = fileio.join(shards_dir, manifest_schema.FILE_NAME)
    if not fileio.exists(path):
        raise SystemExit(f"{shards_dir}: no {manifest_schema.FILE_NAME}: not a finished shard set "
                         "(an interrupted build leaves none; re-run it first)")
    raw = fileio.read_bytes(path)
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: not JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise SystemExit(f"{path}: not a smartbrush manifest")
    try:
        manifest_schema.check_header(manifest, path)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if manifest.get("kind") != manifest_schema.KIND_INPAINTING:
        raise SystemExit(f"{path}: a {manifest.get('kind')!r} shard set; remask reads "
                         f"{manifest_schema.KIND_INPAINTING!r} sets")
    return manifest, raw


def derived_config(input_config: dict, schedule_arg: str, where: str) -> config_mod.BuildConfig:
    """The input set's build config with the new schedule: a build with it gives the same shards."""
    try:
        return config_mod.build_config_from_dict(config_mod.merge(input_config, {"schedule": schedule_arg}),
                                                 f"{where} config")
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _same_folder(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def run(argv: list[str] | None = None) -> PipelineResult:
    args, beam_args = parse_job_args(build_parser(), argv)
    manifest, raw = read_input_manifest(args.shards)
    try:
        schedule = config_mod.load_schedule(args.schedule)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if _same_folder(args.out, args.shards):
        raise SystemExit("--out must differ from --shards: remask writes a new shard set")
    cfg = derived_config(manifest["config"], args.schedule, args.shards)
    manifest_path = fileio.join(args.shards, manifest_schema.FILE_NAME)
    sha = manifest_schema.manifest_sha256(raw)
    input_files = [{"path": manifest_path, "bytes": len(raw), "sha256": sha}]
    prepare_output(args.out, cfg, make_identity(manifest_schema.KIND_INPAINTING, cfg.to_dict(), schedule.to_json(),
                                                inputs=input_files))
    lineage = {"input_manifest_sha256": sha, "input_dir": args.shards,
               "input_mask_schedule": manifest["mask_schedule"], "input_counts": manifest["counts"]}
    if manifest.get("lineage"):
        lineage["input_lineage"] = manifest["lineage"]
    names = sorted(s["name"] for s in manifest["shards"])

    options, runner = pipeline_options(beam_args)
    p = beam.Pipeline(runner=runner, options=options)
    # Create reshuffles its elements (reshuffle=True), which spreads the shards over the workers.
    done = (p | "ShardNames" >> beam.Create(names, reshuffle=True)
            | "Remask" >> beam.ParDo(RemaskShardDoFn(args.shards, args.out, sha, schedule))
            .with_outputs(REJECTED, INPUTS, main="shards"))
    # Counts carry the input set's forward (its inputs, rejected and filtered rows); this stage's
    # own counts (inputs = the input set's samples) go to lineage.remask_counts. Both must reconcile.
    finalize(p, args.out, manifest_schema.KIND_INPAINTING, cfg, schedule.to_json(), input_files, done.shards,
             done[REJECTED], done[INPUTS], upstream_dir=args.shards, lineage=lineage, stage_counts="remask_counts")
    result = p.run()
    result.wait_until_finish()
    return result
