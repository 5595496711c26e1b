"""`smartbrush caption`: add captions to an instance table (label, or BLIP on local object crops
through Beam RunInference). The stage itself is transforms.caption.CaptionRowLists."""

from __future__ import annotations

import argparse
import logging
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from smartbrush.pipeline.caption.blip import BlipCaptioner
from smartbrush.pipeline.commands.common import (BEAM_FLAGS_HELP, add_captioner_flags, captioner_from_args,
                                                 describe_captioner, pipeline_options)
from smartbrush.flags import parse_job_args
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.identity import claim_output, make_identity
from smartbrush.pipeline.storage.manifest import finalize_set, input_file_entry, read_manifest
from smartbrush.pipeline.caption.captioners import has_caption_by
from smartbrush.pipeline.transforms.caption import DROPPED, DROPPED_FILE, REJECTED, CaptionRowLists
from smartbrush.pipeline.transforms.table import read_instance_table, write_instance_table
from smartbrush.pipeline.transforms.worker import WorkerDoFn
from smartbrush.schemas import instance_table
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema

log = logging.getLogger("smartbrush.caption")

def caption_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbrush caption", epilog=BEAM_FLAGS_HELP,
        description="Add captions to an instance table; captions by other models are kept. Writes a new "
                    "instance table with rejected.parquet, captions_dropped.parquet and manifest.json.")
    parser.add_argument("--table", required=True, help="instance table folder (from ingest, caption or build)")
    parser.add_argument("--out", required=True, help="new instance table folder")
    add_captioner_flags(parser)
    return parser


def _prepare_out(table: str, out: str, identity: dict) -> None:
    """Refuse to overwrite the input, a shard set or a table captioned otherwise (claim_output names
    what differs); drop a previous run's table files."""
    if os.path.abspath(table) == os.path.abspath(out):
        raise SystemExit("--out must differ from --table")
    if not FileSystems.match([fileio.join(table, instance_table.FILE_GLOB)])[0].metadata_list:
        raise SystemExit(f"{table}: no instance table files ({instance_table.FILE_GLOB})")
    manifest_path = fileio.join(out, manifest_schema.FILE_NAME)
    if fileio.exists(manifest_path):
        kind = read_manifest(out).get("kind")
        if kind != manifest_schema.KIND_INSTANCE_TABLE:
            raise SystemExit(f"{out} holds a {kind} set; use a new --out")
    claim_output(out, identity)
    stale = [m.path for m in FileSystems.match([fileio.join(out, instance_table.FILE_GLOB)])[0].metadata_list]
    for name in (manifest_schema.FILE_NAME, rejected_schema.FILE_NAME, DROPPED_FILE):
        if fileio.exists(fileio.join(out, name)):
            stale.append(fileio.join(out, name))
    if stale:
        log.info("caption: replacing %d files of a previous run in %s", len(stale), out)
        FileSystems.delete(stale)


class FinalizeCaptionTable(WorkerDoFn):
    """captions_dropped.parquet, rejected.parquet and manifest.json, once the table is written."""

    def __init__(self, out_dir: str, config: dict, input_files: list[dict], upstream_dir: str | None,
                 lineage: dict):
        self.out_dir, self.config, self.input_files = out_dir, config, input_files
        self.upstream_dir, self.lineage = upstream_dir, lineage

    def process(self, _, table_files, row_counts, rejected, dropped, inputs):
        rejected, dropped = list(rejected), list(dropped)
        n_inputs = sum(inputs)
        written = sum(n for n, _ in row_counts)
        nbytes, sha, _ = fileio.atomic_write_bytes(fileio.join(self.out_dir, DROPPED_FILE), rejected_schema.table_bytes(dropped))
        by_reason: dict[str, int] = {}
        for d in dropped:
            by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + 1
        lineage = {**self.lineage, "table_files": len(list(table_files)),
                   "captions_added": sum(a for _, a in row_counts),
                   "captions_dropped": dict(sorted(by_reason.items())),
                   "dropped_file": {"name": DROPPED_FILE, "rows": len(dropped), "bytes": nbytes, "sha256": sha}}
        yield finalize_set(self.out_dir, manifest_schema.KIND_INSTANCE_TABLE, self.config, None, self.input_files,
                           n_inputs, [{"samples": written}], rejected, lineage, upstream=self.upstream_dir)


def run(argv: list[str] | None = None) -> PipelineResult:
    args, beam_args = parse_job_args(caption_parser(), argv)
    captioner = captioner_from_args(args)
    upstream = args.table if fileio.exists(fileio.join(args.table, manifest_schema.FILE_NAME)) else None
    input_files = ([input_file_entry(fileio.join(args.table, manifest_schema.FILE_NAME))] if upstream
                   else [{"path": args.table, "bytes": 0, "sha256": ""}])
    described = describe_captioner(captioner)
    config = {"caption": described, "upstream_config": read_manifest(upstream)["config"] if upstream else None}
    _prepare_out(args.table, args.out, make_identity(manifest_schema.KIND_INSTANCE_TABLE,
                                                     {**config, "caption": {**described, "runtime": None}},
                                                     captioner=described, inputs=input_files))
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
