"""Beam transforms of the caption stage: captions for per-image row lists (label, or a model through
RunInference, which batches crops across images). Crops stay inside one fused stage; only rows,
keys and caption texts cross the join."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from smartbrush.config import RenderConfig
from smartbrush.pipeline.caption.blip import BlipCaptioner, attach_captions
from smartbrush.pipeline.caption.captioners import Captioner, add_caption, has_caption_by
from smartbrush.pipeline.caption.crops import image_crops
from smartbrush.pipeline.errors import rejection
from smartbrush.pipeline.storage.shard_plan import image_key
from smartbrush.pipeline.transforms.worker import WorkerDoFn

REJECTED = "rejected"
DROPPED = "dropped"  # captions dropped (degenerate); their rows stay in the table
DROPPED_FILE = "captions_dropped.parquet"
_KEYED_ROWS = "keyed_rows"


class CaptionWithoutImages(WorkerDoFn):
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


class MakeCaptionCrops(WorkerDoFn):
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


class AttachCaptions(WorkerDoFn):
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
