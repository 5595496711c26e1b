"""Planning shards from keys and writing them where the samples are rendered.

Only instance rows (RLE, box, captions: about a kilobyte each) and keys cross a shuffle; the plan
crosses as a side input of one key per shard. Sample bytes exist only inside WriteShardDoFn.
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from smartbrush.pipeline.transforms.shard_writer import PARTS_DIR, ShardRenderer
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.shard_plan import image_key, plan_boundaries, shard_of
from smartbrush.schemas.shard_tar import shard_name
from smartbrush.pipeline.transforms.worker import WorkerDoFn

REJECTED = "rejected"


def plan_file(prefix: str) -> str:
    return f"plan-{prefix}.json"


class PlanCombineFn(beam.CombineFn):
    """(image key, instance count) pairs -> shard boundaries. The accumulator holds keys, not rows."""

    def __init__(self, samples_per_shard: int):
        self.samples_per_shard = samples_per_shard

    def create_accumulator(self):
        return []

    def add_input(self, acc, pair):
        acc.append(pair)
        return acc

    def merge_accumulators(self, accs):
        return [pair for acc in accs for pair in acc]

    def extract_output(self, acc):
        return {"boundaries": plan_boundaries(acc, self.samples_per_shard), "instances": sum(n for _, n in acc)}


def _write_plan(plan: dict, out_dir: str, prefix: str) -> dict:
    """The plan's totals for the progress line (rewritten identically on re-runs)."""
    summary = {"shards": len(plan["boundaries"]), "instances": plan["instances"]}
    fileio.atomic_write_bytes(fileio.join(out_dir, PARTS_DIR, plan_file(prefix)), json.dumps(summary).encode())
    return plan


class WriteShardDoFn(WorkerDoFn):
    """(shard index, row lists) -> the shard's info; rejected rows on the REJECTED output."""

    def __init__(self, renderer: ShardRenderer, prefix: str):
        self.renderer, self.prefix = renderer, prefix
        self.written = Metrics.counter("shard", "shards_written")
        self.reused = Metrics.counter("shard", "shards_already_complete")
        self.samples = Metrics.counter("shard", "samples_written")
        self.failed = Metrics.counter("shard", "instances_rejected")
        self.decoded = Metrics.counter("shard", "images_decoded")
        self.captions = Metrics.counter("shard", "captions_added")
        self.dropped = Metrics.counter("shard", "captions_degenerate")

    def process(self, element):
        index, row_lists = element
        outcome = self.renderer.write(shard_name(self.prefix, index), list(row_lists))
        (self.written if outcome.written_now else self.reused).inc()
        self.decoded.inc(outcome.images_decoded)
        self.captions.inc(outcome.captions_added)
        self.dropped.inc(outcome.captions_dropped)
        self.failed.inc(len(outcome.rejected))
        for row in outcome.rejected:
            yield pvalue.TaggedOutput(REJECTED, row)
        if outcome.info is not None:
            self.samples.inc(outcome.info["samples"])
            yield outcome.info


class PlanAndWriteShards(beam.PTransform):
    """Per-image row lists -> shard infos (main) and rejected rows (REJECTED). See storage.shard_plan."""

    def __init__(self, renderer: ShardRenderer, prefix: str, samples_per_shard: int):
        super().__init__()
        self.renderer, self.prefix, self.samples_per_shard = renderer, prefix, samples_per_shard

    def expand(self, row_lists):
        out_dir = self.renderer.out_dir
        plan = (row_lists
                | "ImageCounts" >> beam.Map(lambda rows: (image_key(rows), len(rows)))
                | "Plan" >> beam.CombineGlobally(PlanCombineFn(self.samples_per_shard))
                | "WritePlan" >> beam.Map(_write_plan, out_dir, self.prefix))
        return (row_lists
                | "AssignShard" >> beam.Map(lambda rows, p: (shard_of(image_key(rows), p["boundaries"]), rows),
                                            pvalue.AsSingleton(plan))
                | "GroupByShard" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(WriteShardDoFn(self.renderer, self.prefix)).with_outputs(REJECTED, main="shards"))
