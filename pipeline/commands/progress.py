"""A live progress line for long jobs on the local runner: shards written, samples and samples/s.

The launcher cannot see inside the worker processes while the runner works, so it watches what the
workers commit to the output folder: `shard_parts/plan-<prefix>.json` (totals) and one part file per shard.
Works on any filesystem Beam reads; polls every few seconds and reads each part file once.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.runner import PipelineResult

from smartbrush.pipeline.transforms.shard_writer import PARTS_DIR
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.transforms.shards import plan_file


class ShardProgress:
    def __init__(self, out_dir: str, prefix: str, interval: float = 5.0, stream=None, label: str = ""):
        self.parts, self.prefix, self.label = fileio.join(out_dir, PARTS_DIR), prefix, label
        self.interval, self.stream = interval, stream or sys.stderr
        self.seen: dict[str, int] = {}
        self.plan: dict | None = None
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def poll(self) -> str | None:
        """Read the new part files; the progress line, or None before the plan exists."""
        try:
            plan = fileio.join(self.parts, plan_file(self.prefix))
            if self.plan is None and fileio.exists(plan):
                self.plan = json.loads(fileio.read_bytes(plan))
            for m in FileSystems.match([fileio.join(self.parts, f"{self.prefix}-[0-9]*.tar.json")])[0].metadata_list:
                if m.path not in self.seen:
                    self.seen[m.path] = json.loads(fileio.read_bytes(m.path))["instances"]
        except (OSError, ValueError):
            return None  # a file being replaced; the next poll reads it
        if self.plan is None:
            return None
        done = sum(self.seen.values())
        rate = done / max(time.monotonic() - self.start, 1e-9)
        return (f"{self.label}shards {len(self.seen)}/{self.plan['shards']}, instances {done}/{self.plan['instances']}, "
                f"{rate:.1f} instances/s")

    def _loop(self) -> None:
        last = None
        while not self._stop.wait(self.interval):
            line = self.poll()
            if line and line != last:
                end = "\r" if self.stream.isatty() else "\n"
                print(f"smartbrush: {line}", end=end, file=self.stream, flush=True)
                last = line

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.stream.isatty():
            print(file=self.stream)


def run_with_progress(p, out_dir: str | None, prefix: str = "", label: str = "",
                      interval: float = 5.0) -> PipelineResult:
    """Run the pipeline to completion, printing the progress line while it runs."""
    if out_dir is None:
        result = p.run()
        result.wait_until_finish()
        return result
    with ShardProgress(out_dir, prefix, interval, label=label):
        result = p.run()
        result.wait_until_finish()
    return result
