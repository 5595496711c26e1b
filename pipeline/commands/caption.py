"""`smartbrush caption`: add captions to an instance table (label, or BLIP on local object crops
through Beam RunInference). `CaptionRowLists` is the same stage for `smartbrush build`."""

from __future__ import annotations

import argparse
import logging
import os

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.runners.runner import PipelineResult

from smartbrush.config import RenderConfig
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.caption.blip import (BlipCaptioner, CaptionerConfigError, GenerationSettings, RuntimeSettings,
                                      attach_captions)
from smartbrush.pipeline.caption.crops import CropPolicy, image_crops
from smartbrush.pipeline.caption.captioners import Captioner, LabelCaptioner, add_caption
from smartbrush.pipeline.errors import rejection
from smartbrush.pipeline.commands.build import BEAM_FLAGS_HELP, pipeline_options, read_instance_table, write_instance_table
from smartbrush.pipeline.storage.manifest import (counts, input_file_entry, make_manifest, read_manifest, read_rejected,
                                          rejected_table_bytes, write_rejected_and_manifest)
from smartbrush.pipeline.transforms.core import REJECTED
from smartbrush.schemas import instance_table
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema

log = logging.getLogger("smartbrush.caption")

DROPPED = "dropped"  # captions dropped (degenerate); their rows stay in the table
DROPPED_FILE = "captions_dropped.parquet"
_KEYED_ROWS = "keyed_rows"


def image_key(rows: list[dict]) -> str:
    """Joins an image's rows with its captions: the smallest instance_id (unique, unlike paths)."""
    return min(r["instance_id"] for r in rows)


def has_caption_by(row: dict, record: dict) -> bool:
    return any((c["model"], c["revision"], c["settings"]) == (record["model"], record["revision"], record["settings"])
               for c in row.get("captions") or [])


class CaptionWithoutImages(beam.DoFn):
    """Captioners that need no pixels (label): one pass over each row list."""

    def __init__(self, captioner: Captioner, stage: str):
        self.captioner, self.stage = captioner, stage
        self.added = Metrics.counter("caption", "captions_added")
        self.dropped = Metrics.counter("caption", "captions_degenerate")

    def process(self, rows: list[dict]):
        out = []
        for row, record in zip(rows, self.captioner.caption_rows(rows)):
            if record is None:
                self.dropped.inc()
                yield pvalue.TaggedOutput(DROPPED, rejection(row["instance_id"], row["source"], self.stage,
                                                             "caption_degenerate", "", row["image_path"]))
                out.append(row)
            else:
                self.added.inc()
                out.append(add_caption(row, record))
        yield out


class MakeCaptionCrops(beam.DoFn):
    """Decodes each source image once and emits ((image key, instance_id), crop) per instance, the
    rows that got a crop keyed by image, and rejections for those that did not."""

    def __init__(self, captioner: BlipCaptioner, render: RenderConfig, stage: str):
        self.captioner, self.render, self.stage = captioner, render, stage
        self.images = Metrics.counter("caption", "images")
        self.crops = Metrics.counter("caption", "crops")
        self.failed = Metrics.counter("caption", "crops_rejected")

    def process(self, rows: list[dict]):
        crops, kept, rejected = image_crops(rows, self.captioner.crop_input, self.render, self.stage)
        self.images.inc()
        self.crops.inc(len(crops))
        self.failed.inc(len(rejected))
        for r in rejected:
            yield pvalue.TaggedOutput(REJECTED, r)
        if kept:
            key = image_key(kept)
            yield pvalue.TaggedOutput(_KEYED_ROWS, (key, kept))
            for instance_id, crop in crops:
                yield (key, instance_id), crop


class AttachCaptions(beam.DoFn):
    def __init__(self, captioner: BlipCaptioner, stage: str):
        self.captioner, self.stage = captioner, stage
        self.added = Metrics.counter("caption", "captions_added")
        self.degenerate = Metrics.counter("caption", "captions_degenerate")

    def process(self, element):
        _, grouped = element
        row_lists, texts = list(grouped["rows"]), dict(grouped["texts"])
        for rows in row_lists:
            out, dropped = attach_captions(rows, texts, self.captioner, self.stage)
            self.added.inc(len(out) - len(dropped))
            self.degenerate.inc(len(dropped))
            for d in dropped:
                yield pvalue.TaggedOutput(DROPPED, d)
            yield out


class CaptionRowLists(beam.PTransform):
    """Per-image row lists -> per-image row lists with the captioner's caption added to each row.

    Returns a dict: "rows"; REJECTED, rows whose image or crop could not be made (left out of
    "rows"); DROPPED, captions dropped as degenerate (those rows stay in "rows", other captions kept).
    Model captioners run on RunInference, which batches crops across images."""

    def __init__(self, captioner: Captioner, render: RenderConfig | None = None, stage: str = "caption"):
        super().__init__()
        self.captioner, self.render, self.stage = captioner, render or RenderConfig(), stage

    def expand(self, rows):
        if not self.captioner.needs_image:
            out = rows | "Label" >> beam.ParDo(CaptionWithoutImages(self.captioner, self.stage)).with_outputs(
                DROPPED, main="rows")
            empty = rows.pipeline | "NoRejections" >> beam.Create([])
            return {"rows": out.rows, REJECTED: empty, DROPPED: out[DROPPED]}
        cropped = rows | "Crops" >> beam.ParDo(MakeCaptionCrops(self.captioner, self.render, self.stage)).with_outputs(
            _KEYED_ROWS, REJECTED, main="crops")
        texts = (cropped.crops
                 | "Model" >> RunInference(KeyedModelHandler(self.captioner.model_handler()))
                 | "ByImage" >> beam.MapTuple(lambda key, text: (key[0], (key[1], text))))
        attached = ({"rows": cropped[_KEYED_ROWS], "texts": texts} | "Join" >> beam.CoGroupByKey()
                    | "Attach" >> beam.ParDo(AttachCaptions(self.captioner, self.stage)).with_outputs(
                        DROPPED, main="rows"))
        return {"rows": attached.rows, REJECTED: cropped[REJECTED], DROPPED: attached[DROPPED]}


def add_captioner_flags(parser: argparse.ArgumentParser, default: str | None = "label") -> None:
    """The captioner flags; `smartbrush build` passes default=None so that its config decides."""
    g = parser.add_argument_group("captioner")
    g.add_argument("--captioner", default=default, choices=["label", "blip"],
                   help="label: the class name; blip: a BLIP/BLIP-2 caption of each object's crop "
                        f"(default: {default or 'from the config'})")
    g.add_argument("--model", help="BLIP checkpoint: a local directory, or a hub id (downloads it; needs "
                                   "HF_HUB_OFFLINE=0)")
    g.add_argument("--revision", help="hub revision (branch, tag or commit) for a hub id")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: bfloat16 on cuda, float32 on cpu")
    g.add_argument("--num-beams", type=int, default=1, help="1: greedy search; more: beam search")
    g.add_argument("--max-new-tokens", type=int, default=20)
    g.add_argument("--prompt", default="", help='text the caption starts with, e.g. "a picture of"; stripped')
    g.add_argument("--min-batch-size", type=int, default=32, help="RunInference batch bounds")
    g.add_argument("--max-batch-size", type=int, default=32)
    g.add_argument("--share-model", action="store_true",
                   help="one model per machine shared by all worker processes (large checkpoints)")
    g.add_argument("--cpu-threads", type=int, default=RuntimeSettings.cpu_threads,
                   help="torch threads per worker process on CPU (0: torch's default, all cores)")
    g.add_argument("--crop-margin", type=float, default=CropPolicy.margin,
                   help="added on each side of the box, as a fraction of its longer side")
    g.add_argument("--crop-min-side", type=int, default=CropPolicy.min_side, help="minimum crop side, source pixels")
    g.add_argument("--grey-background", action="store_true", help="grey out pixels outside the object's mask")


def captioner_from_args(args: argparse.Namespace) -> Captioner:
    """The captioner the flags describe; SystemExit with the reason when the model cannot work."""
    if args.captioner in (None, "label"):
        return LabelCaptioner()
    if not args.model:
        raise SystemExit("--captioner blip needs --model PATH_OR_ID")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device == "cuda" else "float32")
    try:
        return BlipCaptioner.from_pretrained(
            args.model, revision=args.revision,
            generation=GenerationSettings(args.num_beams, args.max_new_tokens, args.prompt, dtype),
            runtime=RuntimeSettings(args.device, args.min_batch_size, args.max_batch_size, args.share_model,
                                    args.cpu_threads),
            crop=CropPolicy(args.crop_margin, args.crop_min_side, args.grey_background))
    except CaptionerConfigError as e:
        raise SystemExit(f"smartbrush: {e}") from None


def describe_captioner(captioner: Captioner) -> dict:
    if isinstance(captioner, BlipCaptioner):
        return captioner.describe()
    return {"captioner": captioner.name, "model": captioner.name, "revision": "", "settings": {}}


def caption_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbrush caption", epilog=BEAM_FLAGS_HELP,
        description="Add captions to an instance table; captions by other models are kept. Writes a new "
                    "instance table with rejected.parquet, captions_dropped.parquet and manifest.json.")
    parser.add_argument("--table", required=True, help="instance table folder (from ingest, caption or build)")
    parser.add_argument("--out", required=True, help="new instance table folder")
    add_captioner_flags(parser)
    return parser


def _prepare_out(table: str, out: str) -> None:
    """Refuse to overwrite the input or a shard set; drop a previous run's table files."""
    if os.path.abspath(table) == os.path.abspath(out):
        raise SystemExit("--out must differ from --table")
    if not FileSystems.match([fileio.join(table, instance_table.FILE_GLOB)])[0].metadata_list:
        raise SystemExit(f"{table}: no instance table files ({instance_table.FILE_GLOB})")
    manifest_path = fileio.join(out, manifest_schema.FILE_NAME)
    if fileio.exists(manifest_path):
        kind = read_manifest(out).get("kind")
        if kind != manifest_schema.KIND_INSTANCE_TABLE:
            raise SystemExit(f"{out} holds a {kind} set; use a new --out")
    fileio.makedirs(out)
    stale = [m.path for m in FileSystems.match([fileio.join(out, instance_table.FILE_GLOB)])[0].metadata_list]
    for name in (manifest_schema.FILE_NAME, rejected_schema.FILE_NAME, DROPPED_FILE):
        if fileio.exists(fileio.join(out, name)):
            stale.append(fileio.join(out, name))
    if stale:
        log.info("caption: replacing %d files of a previous run in %s", len(stale), out)
        FileSystems.delete(stale)


class FinalizeCaptionTable(beam.DoFn):
    """captions_dropped.parquet, rejected.parquet and manifest.json, once the table is written."""

    def __init__(self, out_dir: str, config: dict, input_files: list[dict], upstream_dir: str | None,
                 lineage: dict):
        self.out_dir, self.config, self.input_files = out_dir, config, input_files
        self.upstream_dir, self.lineage = upstream_dir, lineage

    def process(self, _, table_files, row_counts, rejected, dropped, inputs):
        rejected, dropped = list(rejected), list(dropped)
        n_inputs = sum(inputs)
        if self.upstream_dir:
            n_inputs = read_manifest(self.upstream_dir)["counts"]["inputs"]
            rejected += read_rejected(self.upstream_dir)
        written = sum(n for n, _ in row_counts)
        nbytes, sha = fileio.atomic_write_bytes(fileio.join(self.out_dir, DROPPED_FILE), rejected_table_bytes(dropped))
        by_reason: dict[str, int] = {}
        for d in dropped:
            by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + 1
        lineage = {**self.lineage, "table_files": len(list(table_files)),
                   "captions_added": sum(a for _, a in row_counts),
                   "captions_dropped": dict(sorted(by_reason.items())),
                   "dropped_file": {"name": DROPPED_FILE, "rows": len(dropped), "bytes": nbytes, "sha256": sha}}
        c = counts(n_inputs, written, rejected)
        yield write_rejected_and_manifest(
            self.out_dir, rejected,
            lambda rej: make_manifest(manifest_schema.KIND_INSTANCE_TABLE, self.config, None, self.input_files, c,
                                      [], rej, lineage))


def run(argv: list[str] | None = None) -> PipelineResult:
    args, beam_args = caption_parser().parse_known_args(argv)
    captioner = captioner_from_args(args)
    upstream = args.table if fileio.exists(fileio.join(args.table, manifest_schema.FILE_NAME)) else None
    input_files = ([input_file_entry(fileio.join(args.table, manifest_schema.FILE_NAME))] if upstream
                   else [{"path": args.table, "bytes": 0, "sha256": ""}])
    _prepare_out(args.table, args.out)
    described = describe_captioner(captioner)
    config = {"caption": described, "upstream_config": read_manifest(upstream)["config"] if upstream else None}
    lineage = {"input_table": args.table, "input_manifest_sha256": input_files[0]["sha256"],
               "captioner": {k: described[k] for k in ("captioner", "model", "revision", "settings")}}
    probe = captioner.record("") if isinstance(captioner, BlipCaptioner) else None

    options, runner = pipeline_options(beam_args)
    p = beam.Pipeline(runner=runner, options=options)
    rows = read_instance_table(p, args.table)
    inputs = rows | "CountInputs" >> beam.Map(len)
    captioned = rows | "Caption" >> CaptionRowLists(captioner)
    table_files = write_instance_table(captioned["rows"], fileio.join(args.out, "instances"))
    row_counts = captioned["rows"] | "CountRows" >> beam.Map(_row_and_caption_counts, probe)
    (p | "FinalizeTrigger" >> beam.Create([None])
     | "Finalize" >> beam.ParDo(FinalizeCaptionTable(args.out, config, input_files, upstream, lineage),
                                table_files=beam.pvalue.AsList(table_files),
                                row_counts=beam.pvalue.AsList(row_counts),
                                rejected=beam.pvalue.AsList(captioned[REJECTED]),
                                dropped=beam.pvalue.AsList(captioned[DROPPED]),
                                inputs=beam.pvalue.AsList(inputs)))
    result = p.run()
    result.wait_until_finish()
    log_summary(result)
    return result


def _row_and_caption_counts(rows: list[dict], probe: dict | None) -> tuple[int, int]:
    """(rows, rows holding this model's caption); for label the caption is always added."""
    if probe is None:
        return len(rows), len(rows)
    return len(rows), sum(1 for r in rows if has_caption_by(r, probe))


def caption_metrics(result: PipelineResult) -> dict:
    """The caption namespace's counters, plus the batch size distribution (count, mean, min, max)."""
    out: dict = {}
    metrics = result.metrics().query(MetricsFilter().with_namespace("caption"))
    for c in metrics["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + c.committed
    for d in metrics["distributions"]:
        if d.key.metric.name == "batch_size" and d.committed:
            v = d.committed
            out["batch_size"] = {"count": v.count, "mean": v.mean, "min": v.min, "max": v.max}
    return out


def log_summary(result: PipelineResult) -> None:
    try:
        m = caption_metrics(result)
    except Exception as e:  # some runners do not report metrics
        log.info("caption: done (no metrics: %s)", e)
        return
    bs = m.get("batch_size") or {}
    log.info("caption: %d images, %d crops (%d rejected), %d batches (mean size %.1f), %d captions added, "
             "%d dropped as degenerate", m.get("images", 0), m.get("crops", 0), m.get("crops_rejected", 0),
             m.get("batches", 0), bs.get("mean", 0.0), m.get("captions_added", 0), m.get("captions_degenerate", 0))
