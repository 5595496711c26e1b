"""The per-shard step of `smartbrush remask` (pipeline/commands/remask.py) as a DoFn.

It lives apart from the command so that a worker unpickling it imports what remasking needs
(pipeline/render/remask.py) and not the command's flag, captioner and identity modules."""

from __future__ import annotations

import json

from apache_beam import pvalue
from apache_beam.metrics import Metrics

from smartbrush.pipeline.render.remask import remask_shard
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.transforms.worker import WorkerDoFn
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas.mask_schedule import MaskSchedule

REJECTED = "rejected"
INPUTS = "inputs"


class RemaskShardDoFn(WorkerDoFn):
    """Shard name -> the output shard's info; REJECTED rows and the INPUTS count on side outputs."""

    def __init__(self, in_dir: str, out_dir: str, manifest_sha256: str, schedule: MaskSchedule):
        self.in_dir, self.out_dir, self.manifest_sha256, self.schedule = in_dir, out_dir, manifest_sha256, schedule
        self.written = Metrics.counter("remask", "shards_written")
        self.kept = Metrics.counter("remask", "shards_already_complete")
        self.samples = Metrics.counter("remask", "samples_written")
        self.failed = Metrics.counter("remask", "samples_rejected")

    def setup(self):
        super().setup()
        # The shard entries come from the manifest on the worker, not through the job graph.
        raw = fileio.read_bytes(fileio.join(self.in_dir, manifest_schema.FILE_NAME))
        if manifest_schema.manifest_sha256(raw) != self.manifest_sha256:
            raise RuntimeError(f"{self.in_dir}/{manifest_schema.FILE_NAME} changed while remask was running")
        self.entries = {s["name"]: s for s in json.loads(raw)["shards"]}

    def process(self, name: str):
        result = remask_shard(self.in_dir, self.out_dir, self.entries[name], self.schedule)
        (self.written if result.written_now else self.kept).inc(int(result.info is not None))
        self.samples.inc(result.info["samples"] if result.info else 0)
        self.failed.inc(len(result.rejected))
        for row in result.rejected:
            yield pvalue.TaggedOutput(REJECTED, row)
        yield pvalue.TaggedOutput(INPUTS, (name, result.inputs))
        if result.info is not None:
            yield result.info
