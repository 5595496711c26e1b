"""Beam transforms of the ingest stage: annotation files to per-image instance row lists."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from smartbrush.config import FilterConfig
from smartbrush.pipeline.errors import rejection
from smartbrush.pipeline.sources import coco, openimages

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
