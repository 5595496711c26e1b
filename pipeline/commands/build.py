"""The corpus-build jobs. Each has run(argv=None) -> PipelineResult; unknown flags go to Beam."""

from __future__ import annotations

import argparse
import logging
import os

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from smartbrush import config as config_mod
from smartbrush.pipeline.sources import coco
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.sources import openimages
from smartbrush.pipeline.storage.manifest import input_file_entry
from smartbrush.pipeline.transforms.core import (INPUTS, REJECTED, IngestCoco, IngestOpenImages,
                                            RenderImageSamples, WriteShards, finalize)
from smartbrush.schemas import instance_table
from smartbrush.schemas import manifest as manifest_schema

log = logging.getLogger("smartbrush")

BEAM_FLAGS_HELP = ("Flags this job does not know are Beam pipeline options and pass through unchanged, e.g. "
                   "--runner DataflowRunner --project P --region R --temp_location gs://B/tmp "
                   "--setup_file ./setup.py, or --direct_num_workers 2 --direct_running_mode multi_processing "
                   "for the local runner (the default).")


def pipeline_options(beam_args: list[str]) -> tuple[PipelineOptions, object]:
    """Beam options plus the runner to use. The local default is Beam's FnApiRunner, which is what
    the DirectRunner runs batch pipelines on, without first trying to download the Prism binary."""
    options = PipelineOptions(beam_args)
    runner_name = options.view_as(StandardOptions).runner
    if runner_name in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(DirectOptions)
        if direct.direct_num_workers == 0:
            direct.direct_num_workers = os.cpu_count() or 1
        if direct.direct_num_workers > 1 and direct.direct_running_mode == "in_memory":
            direct.direct_running_mode = "multi_processing"
        return options, FnApiRunner()
    return options, runner_name


def add_config_flags(parser: argparse.ArgumentParser, shard_flags: bool = True) -> None:
    g = parser.add_argument_group("configuration (flags override --config)")
    g.add_argument("--config", default="default",
                   help=f"build config preset ({', '.join(config_mod.list_presets('build'))}) or YAML file")
    if shard_flags:
        g.add_argument("--schedule", help="mask schedule preset "
                       f"({', '.join(config_mod.list_presets('schedules'))}) or YAML file")
        g.add_argument("--resolution", type=int, help="training crop and mask size R (R x R)")
        g.add_argument("--samples-per-shard", type=int)
        g.add_argument("--jpeg-quality", type=int)
    g.add_argument("--min-area", type=int, help="filter instances with fewer mask pixels")
    g.add_argument("--min-box-side", type=int, help="filter instances whose box is thinner")
    g.add_argument("--max-instances-per-image", type=int, help="keep the N largest per image (0: all)")
    g.add_argument("--include-crowd", action="store_true", default=None, help="keep COCO crowd annotations")


def resolve_config(args: argparse.Namespace) -> config_mod.BuildConfig:
    o: dict = {}

    def put(section, key, value):
        if value is not None:
            (o.setdefault(section, {}) if section else o)[key] = value

    put(None, "schedule", getattr(args, "schedule", None))
    put(None, "captioner", getattr(args, "captioner", None))
    put("render", "resolution", getattr(args, "resolution", None))
    put("render", "jpeg_quality", getattr(args, "jpeg_quality", None))
    put("shards", "samples_per_shard", getattr(args, "samples_per_shard", None))
    put("filters", "min_area", getattr(args, "min_area", None))
    put("filters", "min_box_side", getattr(args, "min_box_side", None))
    put("filters", "max_instances_per_image", getattr(args, "max_instances_per_image", None))
    put("filters", "include_crowd", getattr(args, "include_crowd", None))
    return config_mod.load_build_config(args.config, o)


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


def ingest_sources(p, args, cfg: config_mod.BuildConfig):
    """All configured sources -> (per-image row lists, rejected rows, input counts)."""
    rows, rejected, inputs = [], [], []
    if args.coco_annotations:
        out = p | "IngestCoco" >> IngestCoco(args.coco_annotations, args.coco_images, _coco_split(args), cfg.filters)
        rows.append(out["rows"]), rejected.append(out[REJECTED]), inputs.append(out[INPUTS])
    if args.openimages_segmentations:
        out = p | "IngestOpenImages" >> IngestOpenImages(args.openimages_segmentations, args.openimages_masks,
                                                         args.openimages_images, args.openimages_classes,
                                                         args.openimages_split, cfg.filters)
        rows.append(out["rows"]), rejected.append(out[REJECTED]), inputs.append(out[INPUTS])

    def flat(pcolls, name):
        return pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | name >> beam.Flatten()

    return flat(rows, "AllRows"), flat(rejected, "AllRejected"), flat(inputs, "AllInputs")


def prepare_output(out_dir: str, cfg: config_mod.BuildConfig) -> None:
    """Create the output folder, refuse to mix configs in it, drop leftovers of an interrupted run."""
    fileio.makedirs(out_dir)
    cfg_path = fileio.join(out_dir, manifest_schema.CONFIG_FILE_NAME)
    text = config_mod.to_yaml(cfg)
    if fileio.exists(cfg_path):
        if fileio.read_bytes(cfg_path).decode() != text:
            raise SystemExit(f"{out_dir} holds a shard set built with another config ({cfg_path}); "
                             "use a new --out, or delete the folder to rebuild")
    else:
        fileio.atomic_write_bytes(cfg_path, text.encode())
    if "://" not in out_dir:
        for name in os.listdir(out_dir):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(out_dir, name))


def write_instance_table(rows, path_prefix: str):
    return (rows | "FlattenRows" >> beam.FlatMap(lambda rs: rs)
            | "WriteTable" >> beam.io.WriteToParquet(path_prefix, instance_table.SCHEMA, file_name_suffix=".parquet",
                                                     codec="zstd"))


def _finish(result: PipelineResult) -> PipelineResult:
    result.wait_until_finish()
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbrush build", epilog=BEAM_FLAGS_HELP,
        description="Ingest, caption and shard in one Beam pipeline: each source image is decoded once. "
                    "Writes WebDataset shards, manifest.json, rejected.parquet, config.yaml and the "
                    "instance table (instances/).")
    add_source_flags(parser)
    parser.add_argument("--out", required=True, help="output folder (any Beam path)")
    from smartbrush.pipeline.commands.caption import add_captioner_flags

    add_captioner_flags(parser, default=None)  # None: the config decides
    add_config_flags(parser)
    return parser


def run_build(argv: list[str] | None = None) -> PipelineResult:
    args, beam_args = build_parser().parse_known_args(argv)
    from smartbrush.pipeline.commands.caption import CaptionRowLists, captioner_from_args, describe_captioner
    from smartbrush.pipeline.caption.captioners import LabelCaptioner

    cfg = resolve_config(args)
    schedule = config_mod.load_schedule(cfg.schedule)
    args.captioner = cfg.captioner
    captioner = captioner_from_args(args)  # a bad --model exits here, before any output
    input_files = check_sources(args)
    prepare_output(args.out, cfg)
    options, runner = pipeline_options(beam_args)
    p = beam.Pipeline(runner=runner, options=options)
    rows, rejected, inputs = ingest_sources(p, args, cfg)
    if captioner.needs_image:  # the label caption stays as the fallback text
        rows = (rows | "LabelCaption" >> CaptionRowLists(LabelCaptioner()))["rows"]
    caption_out = rows | "Caption" >> CaptionRowLists(captioner, cfg.render)
    captioned = caption_out["rows"]
    write_instance_table(captioned, fileio.join(args.out, "instances", "instances"))
    rendered = captioned | "Render" >> beam.ParDo(RenderImageSamples(schedule, cfg.render)).with_outputs(
        REJECTED, main="samples")
    shards = rendered.samples | "Shards" >> WriteShards(args.out, cfg.shards.prefix, cfg.shards.samples_per_shard)
    all_rejected = (rejected, caption_out[REJECTED], rendered[REJECTED]) | "Rejected" >> beam.Flatten()
    finalize(p, args.out, manifest_schema.KIND_INPAINTING, cfg, schedule.to_json(), input_files, shards,
             all_rejected, inputs, lineage={"captioner": describe_captioner(captioner)})
    return _finish(p.run())


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
    args, beam_args = ingest_parser(source).parse_known_args(argv)
    if source == "coco":
        args.openimages_segmentations = args.openimages_masks = None
        args.openimages_images = args.openimages_classes = None
    else:
        args.coco_annotations = None
    cfg = resolve_config(args)
    input_files = check_sources(args)
    prepare_output(args.out, cfg)
    options, runner = pipeline_options(beam_args)
    p = beam.Pipeline(runner=runner, options=options)
    rows, rejected, inputs = ingest_sources(p, args, cfg)
    write_instance_table(rows, fileio.join(args.out, "instances"))
    counts_as_shards = rows | "TableCount" >> beam.Map(lambda rs: {"name": "", "samples": len(rs)})
    finalize(p, args.out, manifest_schema.KIND_INSTANCE_TABLE, cfg, None, input_files, counts_as_shards,
             rejected, inputs)
    return _finish(p.run())


def read_instance_table(p, table_dir: str):
    """Instance table -> per-image row lists (grouped by image path)."""
    pattern = fileio.join(table_dir, instance_table.FILE_GLOB)
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise SystemExit(f"{table_dir}: no instance table files ({instance_table.FILE_GLOB})")
    with fileio.open_read(matches[0].path) as f:
        instance_table.check_schema(pq.read_schema(pa.BufferReader(f.read())), matches[0].path)
    return (p | "ReadTable" >> beam.io.ReadFromParquet(pattern)
            | "KeyByImage" >> beam.Map(lambda r: (r["image_path"], r))
            | "GroupByImage" >> beam.GroupByKey()
            | "RowLists" >> beam.MapTuple(lambda _, rs: sorted(rs, key=lambda r: r["instance_id"])))


def shard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbrush shard", epilog=BEAM_FLAGS_HELP,
        description="Instance table to inpainting shards with a mask schedule.")
    parser.add_argument("--table", required=True, help="instance table folder (from ingest, caption or build)")
    parser.add_argument("--out", required=True)
    add_config_flags(parser)
    return parser


def run_shard(argv: list[str] | None = None) -> PipelineResult:
    args, beam_args = shard_parser().parse_known_args(argv)
    cfg = resolve_config(args)
    schedule = config_mod.load_schedule(cfg.schedule)
    prepare_output(args.out, cfg)
    upstream = args.table if fileio.exists(fileio.join(args.table, manifest_schema.FILE_NAME)) else None
    options, runner = pipeline_options(beam_args)
    p = beam.Pipeline(runner=runner, options=options)
    rows = read_instance_table(p, args.table)
    inputs = (rows | "CountRows" >> beam.Map(len) | "Sum" >> beam.CombineGlobally(sum)
              | "Tag" >> beam.Map(lambda n: (args.table, n)))
    rendered = rows | "Render" >> beam.ParDo(RenderImageSamples(schedule, cfg.render)).with_outputs(
        REJECTED, main="samples")
    shards = rendered.samples | "Shards" >> WriteShards(args.out, cfg.shards.prefix, cfg.shards.samples_per_shard)
    finalize(p, args.out, manifest_schema.KIND_INPAINTING, cfg, schedule.to_json(),
             [{"path": args.table, "bytes": 0, "sha256": ""}], shards, rendered[REJECTED], inputs,
             upstream_dir=upstream)
    return _finish(p.run())
