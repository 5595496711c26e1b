"""The corpus-build jobs: `build` (ingest + caption + shard in one pipeline), `ingest`, `shard`.

Each has run(argv=None) -> PipelineResult; flags the job does not know go to Beam."""

from __future__ import annotations

import argparse
import json
import logging
import os

import apache_beam as beam
from apache_beam.runners.runner import PipelineResult

from smartbrush import config as config_mod
from smartbrush.pipeline.caption.captioners import LabelCaptioner
from smartbrush.pipeline.commands.common import (BEAM_FLAGS_HELP, add_captioner_flags, add_config_flags,
                                                 captioner_from_args, describe_captioner, pipeline_options,
                                                 prepare_output, resolve_config)
from smartbrush.pipeline.commands.progress import run_with_progress
from smartbrush.flags import parse_job_args
from smartbrush.pipeline.transforms.shard_writer import ShardRenderer
from smartbrush.pipeline.sources import coco, openimages
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.identity import make_identity
from smartbrush.pipeline.storage.manifest import finalize_set, input_file_entry
from smartbrush.pipeline.storage.shard_plan import chunk_of, chunk_prefix
from smartbrush.pipeline.transforms.finalize import chunk_record_path, finalize, read_chunk_record
from smartbrush.pipeline.transforms.ingest import INPUTS, REJECTED, IngestCoco, IngestOpenImages
from smartbrush.pipeline.transforms.shards import REJECTED as SHARD_REJECTED
from smartbrush.pipeline.transforms.shards import PlanAndWriteShards
from smartbrush.pipeline.transforms.table import read_instance_table, write_instance_table
from smartbrush.schemas import manifest as manifest_schema

log = logging.getLogger("smartbrush")


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("COCO input")
    g.add_argument("--coco-annotations", help="instances_*.json (any Beam path: local, gs://, s3://)")
    g.add_argument("--coco-images", help="folder of the JSON's file_name entries")
    g.add_argument("--coco-split", help="split name in instance ids (default: from the JSON's file name)")
    g = parser.add_argument_group("OpenImages v6 input")
    g.add_argument("--openimages-segmentations", help="*-annotations-object-segmentation.csv")
    g.add_argument("--openimages-masks", help="folder of the CSV's MaskPath PNGs")
    g.add_argument("--openimages-images", help="folder of <ImageID>.jpg")
    g.add_argument("--openimages-classes", help="class-descriptions CSV (LabelName,DisplayName)")
    g.add_argument("--openimages-split", default="train")


def _coco_split(args) -> str:
    if args.coco_split:
        return args.coco_split
    base = os.path.basename(args.coco_annotations).rsplit(".", 1)[0]
    return base.split("_", 1)[1] if base.startswith("instances_") else base


def check_sources(args) -> list[dict]:
    """Validate the inputs on the launcher (fail fast) and return their manifest entries."""
    files = []
    if args.coco_annotations:
        if not args.coco_images:
            raise SystemExit("--coco-annotations needs --coco-images")
        coco.check_coco_file(args.coco_annotations)
        files.append(input_file_entry(args.coco_annotations))
    oi = [args.openimages_segmentations, args.openimages_masks, args.openimages_images, args.openimages_classes]
    if any(oi):
        if not all(oi):
            raise SystemExit("OpenImages input needs --openimages-segmentations, --openimages-masks, "
                             "--openimages-images and --openimages-classes")
        openimages.check_segmentation_csv(args.openimages_segmentations)
        openimages.check_class_csv(args.openimages_classes)
        files += [input_file_entry(args.openimages_segmentations), input_file_entry(args.openimages_classes)]
    if not files:
        raise SystemExit("no input: pass --coco-annotations/--coco-images and/or the --openimages-* flags")
    return files


def ingest_sources(p, args, cfg: config_mod.BuildConfig, chunk: tuple[int, int] = (0, 1)):
    """All configured sources -> (per-image row lists, rejected rows, input counts)."""
    rows, rejected, inputs = [], [], []
    if args.coco_annotations:
        out = p | "IngestCoco" >> IngestCoco(args.coco_annotations, args.coco_images, _coco_split(args), cfg.filters,
                                                 chunk)
        rows.append(out["rows"]), rejected.append(out[REJECTED]), inputs.append(out[INPUTS])
    if args.openimages_segmentations:
        out = p | "IngestOpenImages" >> IngestOpenImages(args.openimages_segmentations, args.openimages_masks,
                                                         args.openimages_images, args.openimages_classes,
                                                         args.openimages_split, cfg.filters, chunk)
        rows.append(out["rows"]), rejected.append(out[REJECTED]), inputs.append(out[INPUTS])

    def flat(pcolls, name):
        return pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | name >> beam.Flatten()

    return flat(rows, "AllRows"), flat(rejected, "AllRejected"), flat(inputs, "AllInputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbrush build", epilog=BEAM_FLAGS_HELP,
        description="Ingest, caption and shard in one Beam pipeline: each source image is decoded once. "
                    "Writes WebDataset shards, manifest.json, rejected.parquet, config.yaml and the "
                    "instance table (instances/).")
    add_source_flags(parser)
    parser.add_argument("--out", required=True, help="output folder (any Beam path)")
    add_captioner_flags(parser, default=None)  # None: the config decides
    add_config_flags(parser)
    return parser


def run_build(argv: list[str] | None = None) -> PipelineResult:
    args, beam_args = parse_job_args(build_parser(), argv)
    cfg = resolve_config(args)
    schedule = config_mod.load_schedule(cfg.schedule)
    args.captioner = cfg.captioner
    captioner = captioner_from_args(args)  # a bad --model exits here, before any output
    input_files = check_sources(args)
    described = describe_captioner(captioner)
    prepare_output(args.out, cfg, make_identity(manifest_schema.KIND_INPAINTING, cfg.to_dict(), schedule.to_json(),
                                                described, input_files))
    # The label caption is always there (the fallback text); a model's caption is added to it, in the
    # stage that renders the shard, so that each source image is decoded once.
    captioners = [LabelCaptioner()] + ([captioner] if captioner.needs_image else [])
    batch = captioner.runtime.max_batch_size if captioner.needs_image else 32
    renderer = ShardRenderer(args.out, schedule, cfg.render, captioners, table_dir=fileio.join(args.out, "instances"),
                             caption_batch=batch)
    lineage = {"captioner": described}

    def pipeline(chunk: tuple[int, int], prefix: str, record: str | None):
        p = beam.Pipeline(runner=runner, options=options)
        rows, rejected, inputs = ingest_sources(p, args, cfg, chunk)
        written = rows | "Shards" >> PlanAndWriteShards(renderer, prefix, cfg.shards.samples_per_shard)
        all_rejected = (rejected, written[SHARD_REJECTED]) | "Rejected" >> beam.Flatten()
        finalize(p, args.out, manifest_schema.KIND_INPAINTING, cfg, schedule.to_json(), input_files, written.shards,
                 all_rejected, inputs, lineage=lineage, chunk_record=record)
        return p

    options, runner = pipeline_options(beam_args)
    return run_in_chunks(args.out, cfg, pipeline, schedule.to_json(), input_files, lineage=lineage)


def run_in_chunks(out_dir: str, cfg: config_mod.BuildConfig, pipeline, schedule: dict, input_files: list[dict],
                  upstream: str | None = None, lineage: dict | None = None) -> PipelineResult:
    """Run `pipeline(chunk, shard prefix, chunk record path)` once (unchunked: it finalizes itself) or
    once per chunk that is not finished yet, then finalize the whole set from the chunk records."""
    chunks = cfg.shards.chunks
    if chunks == 1:
        return run_with_progress(pipeline((0, 1), cfg.shards.prefix, None), out_dir, cfg.shards.prefix)
    result = None
    for c in range(chunks):
        record = chunk_record_path(out_dir, c)
        if read_chunk_record(record) is not None:
            log.info("build: chunk %d/%d already finished", c + 1, chunks)
            continue
        prefix = chunk_prefix(cfg.shards.prefix, c, chunks)
        result = run_with_progress(pipeline((c, chunks), prefix, record), out_dir, prefix, f"chunk {c + 1}/{chunks}: ")
    records = [read_chunk_record(chunk_record_path(out_dir, c)) for c in range(chunks)]
    unfinished = [c for c, r in enumerate(records) if r is None]
    shards = [s for r in records if r for s in r["shards"]]
    rejected = [row for r in records if r for row in r["rejected"]]
    n_inputs = sum(r["inputs"] for r in records if r)
    if unfinished:  # chunks whose images failed to load: their rejections stand for this run
        for c in unfinished:
            record = json.loads(fileio.read_bytes(chunk_record_path(out_dir, c)))
            shards, rejected, n_inputs = shards + record["shards"], rejected + record["rejected"], n_inputs + record["inputs"]
    finalize_set(out_dir, manifest_schema.KIND_INPAINTING, cfg.to_dict(), schedule, input_files, n_inputs, shards,
                 rejected, lineage, upstream)
    return result


def ingest_parser(source: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"smartbrush ingest {source}", epilog=BEAM_FLAGS_HELP,
        description=f"{source} annotations to the instance table (Parquet), with rejected.parquet and "
                    "manifest.json beside it.")
    add_source_flags(parser)
    parser.add_argument("--out", required=True, help="instance table folder")
    add_config_flags(parser, shard_flags=False)
    return parser


def run_ingest(argv: list[str] | None = None, source: str = "coco") -> PipelineResult:
    args, beam_args = parse_job_args(ingest_parser(source), argv)
    if source == "coco":
        args.openimages_segmentations = args.openimages_masks = None
        args.openimages_images = args.openimages_classes = None
    else:
        args.coco_annotations = None
    cfg = resolve_config(args)
    input_files = check_sources(args)
    prepare_output(args.out, cfg, make_identity(manifest_schema.KIND_INSTANCE_TABLE, cfg.to_dict(),
                                                inputs=input_files))
    options, runner = pipeline_options(beam_args)
    p = beam.Pipeline(runner=runner, options=options)
    rows, rejected, inputs = ingest_sources(p, args, cfg)
    write_instance_table(rows, fileio.join(args.out, "instances"))
    counts_as_shards = rows | "TableCount" >> beam.Map(lambda rs: {"name": "", "samples": len(rs)})
    finalize(p, args.out, manifest_schema.KIND_INSTANCE_TABLE, cfg, None, input_files, counts_as_shards,
             rejected, inputs)
    return run_with_progress(p, None)


def shard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbrush shard", epilog=BEAM_FLAGS_HELP,
        description="Instance table to inpainting shards with a mask schedule.")
    parser.add_argument("--table", required=True, help="instance table folder (from ingest, caption or build)")
    parser.add_argument("--out", required=True)
    add_config_flags(parser)
    return parser


def run_shard(argv: list[str] | None = None) -> PipelineResult:
    args, beam_args = parse_job_args(shard_parser(), argv)
    cfg = resolve_config(args)
    schedule = config_mod.load_schedule(cfg.schedule)
    table_manifest = fileio.join(args.table, manifest_schema.FILE_NAME)
    upstream = args.table if fileio.exists(table_manifest) else None
    input_files = ([input_file_entry(table_manifest)] if upstream
                   else [{"path": args.table, "bytes": 0, "sha256": ""}])
    prepare_output(args.out, cfg, make_identity(manifest_schema.KIND_INPAINTING, cfg.to_dict(), schedule.to_json(),
                                                inputs=input_files))
    renderer = ShardRenderer(args.out, schedule, cfg.render)

    def pipeline(chunk: tuple[int, int], prefix: str, record: str | None):
        p = beam.Pipeline(runner=runner, options=options)
        rows = read_instance_table(p, args.table)
        if chunk[1] > 1:
            rows = rows | "InChunk" >> beam.Filter(
                lambda rs, c: chunk_of(rs[0]["source"], rs[0]["image_id"], c[1]) == c[0], chunk)
        inputs = (rows | "CountRows" >> beam.Map(len) | "Sum" >> beam.CombineGlobally(sum)
                  | "Tag" >> beam.Map(lambda n: (args.table, n)))
        written = rows | "Shards" >> PlanAndWriteShards(renderer, prefix, cfg.shards.samples_per_shard)
        finalize(p, args.out, manifest_schema.KIND_INPAINTING, cfg, schedule.to_json(), input_files, written.shards,
                 written[SHARD_REJECTED], inputs, upstream_dir=upstream if record is None else None,
                 chunk_record=record)
        return p

    options, runner = pipeline_options(beam_args)
    return run_in_chunks(args.out, cfg, pipeline, schedule.to_json(), input_files, upstream=upstream)
