"""Beam RunInference handler for BlipCaptioner (`smartbrush caption`): batches of crops to texts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from smartbrush.pipeline.caption.blip import BlipCaptioner, BlipRuntime

log = logging.getLogger("smartbrush.caption")
PROGRESS_EVERY_S = 30.0


@dataclass
class _Progress:
    crops: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    logged: float = field(default_factory=time.monotonic)


class BlipModelHandler(ModelHandler[np.ndarray, str, BlipRuntime]):
    """RunInference handler: batches of crops (uint8, processor-sized) to raw decoded texts."""

    def __init__(self, captioner: BlipCaptioner):
        rt = captioner.runtime
        super().__init__(min_batch_size=rt.min_batch_size, max_batch_size=rt.max_batch_size,
                         large_model=rt.share_model)
        self.captioner = captioner
        self.batches = Metrics.counter("caption", "batches")
        self.crops = Metrics.counter("caption", "crops_captioned")
        self.batch_size = Metrics.distribution("caption", "batch_size")
        self._progress: _Progress | None = None

    def load_model(self) -> BlipRuntime:
        t0 = time.monotonic()
        runtime = self.captioner.load_runtime()
        log.info("caption: loaded %s (%s, %s) on %s in %.1f s", self.captioner.model_id,
                 self.captioner.ckpt.model_type, self.captioner.generation.dtype, self.captioner.runtime.device,
                 time.monotonic() - t0)
        return runtime

    def run_inference(self, batch: Sequence[np.ndarray], model: BlipRuntime, inference_args=None) -> list[str]:
        texts = model.caption_batch(list(batch))
        self.batches.inc()
        self.crops.inc(len(batch))
        self.batch_size.update(len(batch))
        self._log_progress(len(batch))
        return texts

    def _log_progress(self, n: int) -> None:
        p = self._progress = self._progress or _Progress()
        p.crops, p.batches = p.crops + n, p.batches + 1
        now = time.monotonic()
        if now - p.logged >= PROGRESS_EVERY_S:
            p.logged = now
            log.info("caption: %d crops in %d batches, %.1f crops/s in this worker", p.crops, p.batches,
                     p.crops / max(now - p.started, 1e-9))

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(a.nbytes for a in batch))

    def get_metrics_namespace(self) -> str:
        return "BlipCaption"
