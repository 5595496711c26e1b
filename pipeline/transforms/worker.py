"""What every DoFn of this package does once in the process that runs it.

A Beam worker process imports about 1 700 modules (Beam, pyarrow, pandas, grpc, OpenCV) before the
first bundle. They live until the process exits, and at exit CPython's final collections walk all
of them: about 0.35 s per worker on a 2-core machine. The local multi-process runner stops its
workers one after the other, so a 2-worker job spent 0.8 s of its end there
(benchmarks/bench_remask.py times it as the "runner floor"). Moving the start-up heap into the
collector's permanent generation (gc.freeze) once, at the first DoFn setup, takes that to ~0.05 s
and spares every full collection while the worker runs the same walk. The frozen objects are still
freed by reference counting; only cycles among them are never collected, and a start-up heap holds
few.

Every worker also runs OpenCV on one thread: parallelism comes from the workers, and OpenCV's own
pool (a thread per core) made every worker process compete for every core; even one process alone
remasked 17 % slower with it (0.74 against 0.62 ms per instance, docs/remask.md). Plain functions
(render, remask) leave the thread count to their caller.
"""

from __future__ import annotations

import gc

import apache_beam as beam
import cv2

_frozen = False


def freeze_startup_heap() -> bool:
    """gc.freeze() the first time it is called in a process; True when this call froze."""
    global _frozen
    if _frozen:
        return False
    gc.freeze()
    _frozen = True
    return True


class WorkerDoFn(beam.DoFn):
    """Base of this package's DoFns; subclasses that define setup() call super().setup()."""

    def setup(self):
        cv2.setNumThreads(1)
        freeze_startup_heap()
