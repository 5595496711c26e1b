"""Beam transforms of the ingest stage: annotation files to per-image instance row lists."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from smartbrush.config import FilterConfig
from smartbrush.pipeline.errors import rejection
from smartbrush.pipeline.sources import coco, openimages
from smartbrush.pipeline.storage.shard_plan import chunk_of
from smartbrush.pipeline.transforms.worker import WorkerDoFn

REJECTED = "rejected"
INPUTS = "inputs"
CATEGORIES = "categories"
_ANN_KEYS = ("id", "image_id", "category_id", "iscrowd", "segmentation")


class ReadCocoFile(WorkerDoFn):
    """A COCO instances JSON, read once and streamed on a worker: emits (image_id, ("image", record))
    and (image_id, ("ann", annotation)); the categories (a small dict) on CATEGORIES and the file's
    annotation count on INPUTS."""

    def __init__(self, images_dir: str, split: str, chunk: tuple[int, int] = (0, 1)):
        self.images_dir, self.split, self.chunk = images_dir, split, chunk

    def _mine(self, image_id) -> bool:
        return chunk_of(coco.SOURCE, str(image_id), self.chunk[1]) == self.chunk[0]

    def process(self, path: str):
        n, categories = 0, []
        for kind, obj in coco.iter_coco(path):
            if kind == "image":
                if self._mine(obj["id"]):
                    yield str(obj["id"]), ("image", coco.image_record(obj, self.images_dir, self.split))
            elif kind == "annotation":
                if not self._mine(obj.get("image_id")):
                    continue
                n += 1
                yield str(obj.get("image_id")), ("ann", {k: obj[k] for k in _ANN_KEYS if k in obj})
            else:
                categories.append(obj)
        yield pvalue.TaggedOutput(CATEGORIES, coco.categories_by_id(categories, path))
        yield pvalue.TaggedOutput(INPUTS, (path, n))


class IngestCocoImage(WorkerDoFn):
    """One image's annotations to instance rows (one list per image) and rejections."""

    def __init__(self, filters: FilterConfig, input_path: str, split: str):
        self.filters, self.input_path, self.split = filters, input_path, split
        self.kept = Metrics.counter("ingest", "instances_kept")
        self.dropped = Metrics.counter("ingest", "instances_dropped")

    def process(self, element, categories):
        _, values = element
        images = [v for kind, v in values if kind == "image"]
        anns = [v for kind, v in values if kind == "ann"]
        if not anns:
            return
        rows, rejected = coco.coco_image_rows(images[0] if images else None, anns, categories,
                                              self.filters, self.input_path, self.split)
        self.kept.inc(len(rows))
        self.dropped.inc(len(rejected))
        for r in rejected:
            yield pvalue.TaggedOutput(REJECTED, r)
        if rows:
            yield rows


class IngestOpenImagesImage(WorkerDoFn):
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


def _in_chunk(record: dict, chunk: tuple[int, int]) -> bool:
    """Malformed CSV rows (no ImageID) are accounted for in chunk 0."""
    if "_error" in record:
        return chunk[0] == 0
    return chunk_of(openimages.SOURCE, record["ImageID"], chunk[1]) == chunk[0]


class IngestCoco(beam.PTransform):
    """COCO instances JSON -> per-image lists of instance rows; REJECTED and INPUTS side outputs."""

    def __init__(self, annotations: str, images_dir: str, split: str, filters: FilterConfig,
                 chunk: tuple[int, int] = (0, 1)):
        super().__init__()
        self.annotations_path, self.images_dir, self.split, self.filters = annotations, images_dir, split, filters
        self.chunk = chunk

    def expand(self, pbegin):
        # The file is read once, on a worker; the launcher only checks its first bytes (check_coco_file).
        read = (pbegin | "AnnotationFile" >> beam.Create([self.annotations_path])
                | "StreamJson" >> beam.ParDo(ReadCocoFile(self.images_dir, self.split, self.chunk)).with_outputs(
                    INPUTS, CATEGORIES, main="kv"))
        ingested = (read.kv | "GroupByImage" >> beam.GroupByKey()
                    | "ToRows" >> beam.ParDo(IngestCocoImage(self.filters, self.annotations_path, self.split),
                                             categories=pvalue.AsSingleton(read[CATEGORIES]))
                    .with_outputs(REJECTED, main="rows"))
        return {"rows": ingested.rows, REJECTED: ingested[REJECTED], INPUTS: read[INPUTS]}


class IngestOpenImages(beam.PTransform):
    def __init__(self, segmentations: str, masks_dir: str, images_dir: str, classes: str, split: str,
                 filters: FilterConfig, chunk: tuple[int, int] = (0, 1)):
        super().__init__()
        self.segmentations, self.masks_dir, self.images_dir = segmentations, masks_dir, images_dir
        self.classes, self.split, self.filters, self.chunk = classes, split, filters, chunk

    def expand(self, pbegin):
        labels = (pbegin | "ReadClasses" >> beam.io.ReadFromText(self.classes)
                  | "ParseClasses" >> beam.Map(openimages.parse_class_line) | "DropBad" >> beam.Filter(bool))
        records = (pbegin | "ReadSegmentations" >> beam.io.ReadFromText(self.segmentations, skip_header_lines=1)
                   | "ParseRows" >> beam.Map(openimages.parse_segmentation_line)
                   | "InChunk" >> beam.Filter(_in_chunk, self.chunk))
        inputs = (records | "CountRows" >> beam.combiners.Count.Globally()
                  | "Tag" >> beam.Map(lambda n, path: (path, n), self.segmentations))
        keyed = (records
                 | "Key" >> beam.FlatMap(_malformed_or_keyed, self.segmentations).with_outputs(REJECTED, main="kv"))
        ingested = (keyed.kv | "GroupByImage" >> beam.GroupByKey()
                    | "ToRows" >> beam.ParDo(IngestOpenImagesImage(self.images_dir, self.masks_dir, self.split,
                                                                   self.filters, self.segmentations),
                                             labels=beam.pvalue.AsDict(labels))
                    .with_outputs(REJECTED, main="rows"))
        rejected = (keyed[REJECTED], ingested[REJECTED]) | "AllRejected" >> beam.Flatten()
        return {"rows": ingested.rows, REJECTED: rejected, INPUTS: inputs}
