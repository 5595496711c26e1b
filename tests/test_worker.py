"""The per-process setup every DoFn of this package runs (pipeline/transforms/worker.py)."""

import gc
import os

import apache_beam as beam
import cv2
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

from smartbrush.pipeline.transforms.worker import WorkerDoFn, freeze_startup_heap
from tests.conftest import MULTI


def test_worker_processes_freeze_their_startup_heap_once_and_run_opencv_on_one_thread():
    class Report(WorkerDoFn):
        def setup(self):
            cv2.setNumThreads(3)  # whatever the machine's default, setup leaves one
            super().setup()
            self.frozen_at_setup, self.threads = gc.get_freeze_count(), cv2.getNumThreads()

        def process(self, _):
            # The heap frozen at the first setup holds the worker's imports (Beam alone is
            # ~1 700 modules); a later call freezes nothing more.
            yield os.getpid(), self.frozen_at_setup, freeze_startup_heap(), self.threads

    launcher = os.getpid()

    def check(rows):  # runs in a worker too
        assert rows and launcher not in {pid for pid, *_ in rows}, "the DoFn ran in the launcher"
        for _, at_setup, froze_again, threads in rows:
            assert at_setup > 100_000, at_setup
            assert froze_again is False
            assert threads == 1

    with beam.Pipeline(options=PipelineOptions(MULTI)) as p:
        assert_that(p | beam.Create(range(8), reshuffle=True) | beam.ParDo(Report()), check)
