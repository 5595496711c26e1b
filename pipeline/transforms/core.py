"""Beam DoFns and PTransforms for the corpus build: thin wrappers over the per-element functions."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from smartbrush.config import BuildConfig, FilterConfig, RenderConfig
from smartbrush.pipeline.sources import coco
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.sources import openimages
from smartbrush.pipeline.errors import rejection
from smartbrush.pipeline.storage.manifest import (counts, make_manifest, read_manifest, read_rejected,
                                          write_rejected_and_manifest)
from smartbrush.pipeline.render.per_image import render_image
from smartbrush.pipeline.storage.shards import shard_index, shard_name, write_shard
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas.mask_schedule import MaskSchedule

REJECTED = "rejected"
INPUTS = "inputs"
_ANN_KEYS = ("id", "image_id", "category_id", "iscrowd", "segmentation")


class ReadCocoFile(beam.DoFn):
    """A COCO instances JSON, streamed on a worker: emits (image_id, ("image", record)) and
    (image_id, ("ann", annotation)), plus the file's annotation count on the INPUTS output."""

    def __init__(self, images_dir: str, split: str):
        self.images_dir, self.split = images_dir, split

    def process(self, path: str):
        for image in coco.iter_images(path):
            yield str(image["id"]), ("image", coco.image_record(image, self.images_dir, self.split))
        n = 0
        for ann in coco.iter_annotations(path):
            n += 1
            yield str(ann.get("image_id")), ("ann", {k: ann[k] for k in _ANN_KEYS if k in ann})
        yield pvalue.TaggedOutput(INPUTS, (path, n))


class IngestCocoImage(beam.DoFn):
    """One image's annotations to instance rows (one list per image) and rejections."""

    def __init__(self, categories: dict[int, str], filters: FilterConfig, input_path: str, split: str):
        self.categories, self.filters, self.input_path, self.split = categories, filters, input_path, split
        self.kept = Metrics.counter("ingest", "instances_kept")
        self.dropped = Metrics.counter("ingest", "instances_dropped")

    def process(self, element):
        _, values = element
        images = [v for kind, v in values if kind == "image"]
        anns = [v for kind, v in values if kind == "ann"]
        if not anns:
            return
        rows, rejected = coco.coco_image_rows(images[0] if images else None, anns, self.categories,
                                              self.filters, self.input_path, self.split)
        self.kept.inc(len(rows))
        self.dropped.inc(len(rejected))
        for r in rejected:
            yield pvalue.TaggedOutput(REJECTED, r)
        if rows:
            yield rows


class IngestOpenImagesImage(beam.DoFn):
    def __init__(self, images_dir: str, masks_dir: str, split: str, filters: FilterConfig, input_path: str):
        self.images_dir, self.masks_dir, self.split = images_dir, masks_dir, split
        self.filters, self.input_path = filters, input_path
        self.kept = Metrics.counter("ingest", "instances_kept")
        self.dropped = Metrics.counter("ingest", "instances_dropped")

    def process(self, element, labels):
        image_id, records = element
        rows, rejected = openimages.openimages_image_rows(image_id, list(records), labels, self.images_dir,
                                                          self.masks_dir, self.split, self.filters,
                                                          self.input_path)
        self.kept.inc(len(rows))
        self.dropped.inc(len(rejected))
        for r in rejected:
            yield pvalue.TaggedOutput(REJECTED, r)
        if rows:
            yield rows


def _malformed_or_keyed(record: dict, input_path: str):
    if "_error" in record:
        yield pvalue.TaggedOutput(REJECTED, rejection(record["_line"], openimages.SOURCE, "ingest",
                                                      "invalid_annotation", record["_error"], input_path))
    else:
        yield record["ImageID"], record


class IngestCoco(beam.PTransform):
    """COCO instances JSON -> per-image lists of instance rows; REJECTED and INPUTS side outputs."""

    def __init__(self, annotations: str, images_dir: str, split: str, filters: FilterConfig):
        super().__init__()
        self.annotations_path, self.images_dir, self.split, self.filters = annotations, images_dir, split, filters

    def expand(self, pbegin):
        # The launcher reads only the small `categories` list; annotations are parsed on a worker.
        categories = coco.read_categories(self.annotations_path)
        read = (pbegin | "AnnotationFile" >> beam.Create([self.annotations_path])
                | "StreamJson" >> beam.ParDo(ReadCocoFile(self.images_dir, self.split)).with_outputs(INPUTS, main="kv"))
        ingested = (read.kv | "GroupByImage" >> beam.GroupByKey()
                    | "ToRows" >> beam.ParDo(IngestCocoImage(categories, self.filters, self.annotations_path, self.split))
                    .with_outputs(REJECTED, main="rows"))
        return {"rows": ingested.rows, REJECTED: ingested[REJECTED], INPUTS: read[INPUTS]}


class IngestOpenImages(beam.PTransform):
    def __init__(self, segmentations: str, masks_dir: str, images_dir: str, classes: str, split: str,
                 filters: FilterConfig):
        super().__init__()
        self.segmentations, self.masks_dir, self.images_dir = segmentations, masks_dir, images_dir
        self.classes, self.split, self.filters = classes, split, filters

    def expand(self, pbegin):
        labels = (pbegin | "ReadClasses" >> beam.io.ReadFromText(self.classes)
                  | "ParseClasses" >> beam.Map(openimages.parse_class_line) | "DropBad" >> beam.Filter(bool))
        lines = pbegin | "ReadSegmentations" >> beam.io.ReadFromText(self.segmentations, skip_header_lines=1)
        inputs = (lines | "CountRows" >> beam.combiners.Count.Globally()
                  | "Tag" >> beam.Map(lambda n, path: (path, n), self.segmentations))
        keyed = (lines | "ParseRows" >> beam.Map(openimages.parse_segmentation_line)
                 | "Key" >> beam.FlatMap(_malformed_or_keyed, self.segmentations).with_outputs(REJECTED, main="kv"))
        ingested = (keyed.kv | "GroupByImage" >> beam.GroupByKey()
                    | "ToRows" >> beam.ParDo(IngestOpenImagesImage(self.images_dir, self.masks_dir, self.split,
                                                                   self.filters, self.segmentations),
                                             labels=beam.pvalue.AsDict(labels))
                    .with_outputs(REJECTED, main="rows"))
        rejected = (keyed[REJECTED], ingested[REJECTED]) | "AllRejected" >> beam.Flatten()
        return {"rows": ingested.rows, REJECTED: rejected, INPUTS: inputs}


class RenderImageSamples(beam.DoFn):
    """Decodes each source image once and renders all its instances' samples."""

    def __init__(self, schedule: MaskSchedule, render: RenderConfig, stage: str = "shard"):
        self.schedule, self.render, self.stage = schedule, render, stage
        self.images = Metrics.counter("render", "images")
        self.samples = Metrics.counter("render", "samples")
        self.failed = Metrics.counter("render", "rejected")

    def process(self, rows: list[dict]):
        samples, rejected = render_image(rows, self.schedule, self.render, self.stage)
        self.images.inc()
        self.samples.inc(len(samples))
        self.failed.inc(len(rejected))
        for r in rejected:
            yield pvalue.TaggedOutput(REJECTED, r)
        yield from samples


class WriteShardDoFn(beam.DoFn):
    def __init__(self, out_dir: str, prefix: str):
        self.out_dir, self.prefix = out_dir, prefix
        self.written = Metrics.counter("shard", "shards_written")
        self.kept = Metrics.counter("shard", "shards_already_complete")

    def process(self, element):
        index, samples = element
        info, written = write_shard(self.out_dir, shard_name(self.prefix, index), list(samples))
        (self.written if written else self.kept).inc()
        yield info


def _assign(kv, sorted_keys, samples_per_shard):
    return shard_index(kv[0], sorted_keys, samples_per_shard), kv


class WriteShards(beam.PTransform):
    """(key, sample) pairs -> shards of exactly samples_per_shard samples in key order (the last
    one shorter), so the shard set depends only on the samples. Emits one info dict per shard."""

    def __init__(self, out_dir: str, prefix: str, samples_per_shard: int):
        super().__init__()
        self.out_dir, self.prefix, self.samples_per_shard = out_dir, prefix, samples_per_shard

    def expand(self, samples):
        sorted_keys = (samples | "Keys" >> beam.Keys() | "AllKeys" >> beam.combiners.ToList()
                       | "Sort" >> beam.Map(sorted))
        return (samples
                | "Assign" >> beam.Map(_assign, beam.pvalue.AsSingleton(sorted_keys), self.samples_per_shard)
                | "GroupByShard" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(WriteShardDoFn(self.out_dir, self.prefix)))


class FinalizeShardSet(beam.DoFn):
    """Writes rejected.parquet and manifest.json once every shard is written (side inputs)."""

    def __init__(self, out_dir: str, kind: str, config: dict, schedule: dict | None, input_files: list[dict],
                 upstream_dir: str | None = None, lineage: dict | None = None):
        self.out_dir, self.kind, self.config, self.schedule = out_dir, kind, config, schedule
        self.input_files, self.upstream_dir, self.lineage = input_files, upstream_dir, lineage

    def process(self, _, shards, rejected, inputs):
        rejected = list(rejected)
        n_inputs = sum(n for _, n in inputs)
        if self.upstream_dir:
            # A stage reading an earlier stage's output carries its rejections and input count.
            upstream = read_manifest(self.upstream_dir)
            rejected += read_rejected(self.upstream_dir)
            n_inputs = upstream["counts"]["inputs"]
        written = sum(s["samples"] for s in shards)
        if self.kind == manifest_schema.KIND_INSTANCE_TABLE:
            shards = []  # table files are not content-addressed; the count is what matters
        c = counts(n_inputs, written, rejected)
        manifest = write_rejected_and_manifest(
            self.out_dir, rejected,
            lambda rej: make_manifest(self.kind, self.config, self.schedule, self.input_files, c, list(shards),
                                      rej, self.lineage))
        yield manifest


def finalize(pbegin_or_p, out_dir: str, kind: str, config: BuildConfig | dict, schedule: dict | None,
             input_files: list[dict], shards, rejected, inputs, upstream_dir: str | None = None,
             lineage: dict | None = None):
    cfg = config.to_dict() if isinstance(config, BuildConfig) else config
    return (pbegin_or_p | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize" >> beam.ParDo(FinalizeShardSet(out_dir, kind, cfg, schedule, input_files, upstream_dir, lineage),
                                       shards=beam.pvalue.AsList(shards), rejected=beam.pvalue.AsList(rejected),
                                       inputs=beam.pvalue.AsList(inputs)))


__all__ = ["IngestCoco", "IngestOpenImages", "RenderImageSamples", "WriteShards", "finalize",
           "REJECTED", "INPUTS", "manifest_schema", "fileio"]
