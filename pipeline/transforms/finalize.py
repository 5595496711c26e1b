"""The last step of every shard-set job: rejected.parquet and manifest.json once everything is written."""

from __future__ import annotations

import apache_beam as beam

from smartbrush.config import BuildConfig
from smartbrush.pipeline.storage.manifest import finalize_set, read_manifest, read_rejected


class FinalizeShardSet(beam.DoFn):
    """Writes rejected.parquet and manifest.json once every shard is written (side inputs); fails
    the job when the counts do not reconcile."""

    def __init__(self, out_dir: str, kind: str, config: dict, schedule: dict | None, input_files: list[dict],
                 upstream_dir: str | None = None, lineage: dict | None = None):
        self.out_dir, self.kind, self.config, self.schedule = out_dir, kind, config, schedule
        self.input_files, self.upstream_dir, self.lineage = input_files, upstream_dir, lineage

    def process(self, _, shards, rejected, inputs):
        rejected = list(rejected)
        n_inputs = sum(n for _, n in inputs)
        if self.upstream_dir:
            # A stage reading an earlier stage's output carries its rejections and input count.
            rejected += read_rejected(self.upstream_dir)
            n_inputs = read_manifest(self.upstream_dir)["counts"]["inputs"]
        yield finalize_set(self.out_dir, self.kind, self.config, self.schedule, self.input_files, n_inputs,
                           list(shards), rejected, self.lineage)


def finalize(pbegin_or_p, out_dir: str, kind: str, config: BuildConfig | dict, schedule: dict | None,
             input_files: list[dict], shards, rejected, inputs, upstream_dir: str | None = None,
             lineage: dict | None = None):
    cfg = config.to_dict() if isinstance(config, BuildConfig) else config
    return (pbegin_or_p | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize" >> beam.ParDo(FinalizeShardSet(out_dir, kind, cfg, schedule, input_files, upstream_dir, lineage),
                                       shards=beam.pvalue.AsList(shards), rejected=beam.pvalue.AsList(rejected),
                                       inputs=beam.pvalue.AsList(inputs)))
