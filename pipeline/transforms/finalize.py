"""The last step of every shard-set job: rejected.parquet and manifest.json once everything is written."""

from __future__ import annotations

import json

import apache_beam as beam

from smartbrush.config import BuildConfig
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.manifest import ReconciliationError, counts, finalize_set, reconciles
from smartbrush.pipeline.transforms.worker import WorkerDoFn

CHUNKS_DIR = "chunk_parts"


def chunk_record_path(out_dir: str, chunk: int) -> str:
    return fileio.join(out_dir, CHUNKS_DIR, f"chunk-{chunk:04d}.json")


def write_chunk_record(path: str, shards: list[dict], rejected: list[dict], n_inputs: int) -> dict:
    record = {"shards": sorted(shards, key=lambda s: s["name"]), "inputs": n_inputs,
              "rejected": sorted(rejected, key=lambda r: (r["record_id"], r["stage"], r["reason"], r["detail"]))}
    fileio.atomic_write_bytes(path, json.dumps(record, sort_keys=True).encode())
    return record


def read_chunk_record(path: str) -> dict | None:
    """A finished chunk's record, or None when the chunk must run (again): absent, or an image of it
    failed to load (it may have been fixed since)."""
    if not fileio.exists(path):
        return None
    record = json.loads(fileio.read_bytes(path))
    if any(r["reason"].startswith("image_") for r in record["rejected"]):
        return None
    return record


class FinalizeShardSet(WorkerDoFn):
    """Writes rejected.parquet and manifest.json once every shard is written (side inputs); fails
    the job when the counts do not reconcile.

    With `upstream_dir` (a stage reading an earlier stage's shard set or table) the counts carry the
    upstream set's forward: its inputs, and its rejected and filtered rows (copied into
    rejected.parquet) plus this stage's, so that the manifest reconciles back to the original
    records. `stage_counts` then names a lineage key for this stage's own counts (inputs = the
    records this stage read), which must reconcile too."""

    def __init__(self, out_dir: str, kind: str, config: dict, schedule: dict | None, input_files: list[dict],
                 upstream_dir: str | None = None, lineage: dict | None = None, chunk_record: str | None = None,
                 stage_counts: str | None = None):
        self.out_dir, self.kind, self.config, self.schedule = out_dir, kind, config, schedule
        self.input_files, self.upstream_dir, self.lineage = input_files, upstream_dir, lineage
        self.chunk_record, self.stage_counts = chunk_record, stage_counts

    def process(self, _, shards, rejected, inputs):
        shards, rejected = list(shards), list(rejected)
        n_inputs = sum(n for _, n in inputs)
        if self.chunk_record:  # one chunk of a chunked build: the launcher finalizes once all are done
            yield write_chunk_record(self.chunk_record, shards, rejected, n_inputs)
            return
        lineage = self.lineage
        if self.stage_counts:
            stage = counts(n_inputs, sum(s["samples"] for s in shards), rejected)
            if not reconciles(stage):
                raise ReconciliationError(f"{self.out_dir}: this stage's counts do not reconcile: {stage}; is "
                                          f"{self.upstream_dir} consistent with its manifest?")
            lineage = {**(lineage or {}), self.stage_counts: stage}
        yield finalize_set(self.out_dir, self.kind, self.config, self.schedule, self.input_files, n_inputs,
                           shards, rejected, lineage, upstream=self.upstream_dir)


def finalize(pbegin_or_p, out_dir: str, kind: str, config: BuildConfig | dict, schedule: dict | None,
             input_files: list[dict], shards, rejected, inputs, upstream_dir: str | None = None,
             lineage: dict | None = None, chunk_record: str | None = None, stage_counts: str | None = None):
    """`inputs`: (key, count) pairs of the records this stage read."""
    cfg = config.to_dict() if isinstance(config, BuildConfig) else config
    fn = FinalizeShardSet(out_dir, kind, cfg, schedule, input_files, upstream_dir, lineage, chunk_record,
                          stage_counts)
    return (pbegin_or_p | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize" >> beam.ParDo(fn,
                                       shards=beam.pvalue.AsList(shards), rejected=beam.pvalue.AsList(rejected),
                                       inputs=beam.pvalue.AsList(inputs)))
