"""Loader samples/s from a shard set served over HTTP on 127.0.0.1 (cold and warm shard cache),
against the same loader on the local folder and plain JPEG decoding of the same images, one process,
in one run. Also the floor: the per-sample work no loader avoids (JPEG decode, level-map decode and
the copy into the batch), as a ratio to plain decoding.

    python benchmarks/bench_train_remote.py [--shards DIR] [--batches 30] [--warmup-batches 10]
                                            [--batch-size 8] [--rounds 3] [--default-heap]

Without --shards it builds the embedded sample data at R = 512 into a temporary folder. Each figure
is the median over --rounds rounds that interleave the cases (the machine's load moves between them),
as samples per second of wall time and of this process's CPU time (the server runs in another
process); on a loaded machine the CPU figures are the ones to compare.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from smartbrush.schemas.shard_sample import decode_jpeg, sample_level_map, sample_meta
from smartbrush.schemas.shard_set import iter_samples
from smartbrush.train import stream as stream_module
from smartbrush.train.shard_cache import ShardCache
from smartbrush.train.stream import BatchStream, read_shard_set


class _RangeFiles(SimpleHTTPRequestHandler):
    """Static files with single Range requests, as object stores and CDNs answer them."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, b = rng[len("bytes="):].split("-")
            start, end = int(a or 0), min(int(b) if b else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        f = open(path, "rb")
        f.seek(start)
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        while self._left > 0 and (block := source.read(min(self._left, 1 << 20))):
            outputfile.write(block)
            self._left -= len(block)


def _serve_forever(folder: str, port) -> None:
    handler = lambda *a, **kw: _RangeFiles(*a, directory=folder, **kw)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    port.value = server.server_address[1]
    server.serve_forever()


def serve(folder: str):
    """A loopback HTTP server for `folder` in its own process (its CPU is not the loader's); (process, base URL)."""
    port = multiprocessing.Value("i", 0)
    proc = multiprocessing.get_context("fork").Process(target=_serve_forever, args=(folder, port), daemon=True)
    proc.start()
    while not port.value:
        time.sleep(0.01)
    return proc, f"http://127.0.0.1:{port.value}"


def demo_set(root: str, resolution: int) -> str:
    from smartbrush.pipeline.commands.build import run_build
    from smartbrush.pipeline.commands.demo import sample_build_args

    out = os.path.join(root, "demo")
    run_build(sample_build_args(out, os.path.join(root, "demo-in")) + ["--resolution", str(resolution),
                                                                        "--samples-per-shard", "8"])
    return out


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(n: int, start: tuple[float, float]) -> tuple[float, float]:
    """(samples/s of wall time, samples/s of this process's CPU time)."""
    wall, cpu = _clocks()
    return n / (wall - start[0]), n / max(cpu - start[1], 1e-9)


def time_loader(shard_set, first: int, batches: int, batch_size: int, warmup: int):
    """(wall and CPU samples/s over batches first+warmup .. first+warmup+batches, the keys drawn)."""
    stream = BatchStream([shard_set], [], batch_size=batch_size, resolution=0, num_levels=shard_set.num_levels)
    for j in range(first, first + warmup):
        stream.batch(j)
    keys: list[str] = []
    start = _clocks()
    for j in range(first + warmup, first + warmup + batches):
        if shard_set.cache is not None:
            stream.prefetch(j, 1)
        keys += stream.batch(j)["key"]
    return _rates(len(keys), start), keys


def time_decoding(samples: list[dict]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Rates of plain JPEG decoding and of the floor (JPEG + level-map decode + the copy into a batch)."""
    start = _clocks()
    for s in samples:
        decode_jpeg(s["jpg"])
    raw = _rates(len(samples), start)
    start = _clocks()
    images, maps = [], []
    for k, s in enumerate(samples):
        images.append(decode_jpeg(s["jpg"]))
        maps.append(sample_level_map(s, sample_meta(s)))
        if len(images) == 8 or k == len(samples) - 1:
            np.stack(images), np.stack(maps)
            images, maps = [], []
    return raw, _rates(len(samples), start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", help="an inpainting shard set (default: the sample data built at R = 512)")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--warmup-batches", type=int, default=10, help="untimed batches first (local and warm cache)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--default-heap", action="store_true",
                   help="leave glibc's malloc settings alone (no train.stream.reuse_freed_memory): what it buys")
    args = p.parse_args()
    if args.default_heap:
        stream_module._TUNED_PID = os.getpid()  # counts as done in this process: nothing is changed
    tmp = tempfile.mkdtemp(prefix="bench-train-remote-")
    folder = os.path.abspath(args.shards or demo_set(tmp, 512))
    server, base = serve(os.path.dirname(folder))
    url = f"{base}/{os.path.basename(folder)}"
    local = read_shard_set(folder, "inpainting")
    resolution = decode_jpeg(next(iter_samples(folder, limit=1))["jpg"]).shape[0]  # kept (no resize)
    print(f"shard set {folder}: {sum(s['nsamples'] for s in local.shards)} samples in {len(local.shards)} shards, "
          f"{sum(s['bytes'] for s in local.shards) / 1e6:.1f} MB; served at {url}; R = {resolution}, "
          f"batch {args.batch_size}, {args.batches} timed batches, one process")
    figures: dict[str, list[tuple[float, float]]] = {k: [] for k in ("cold", "warm", "local", "raw", "floor")}
    n, w, bs = args.batches, args.warmup_batches, args.batch_size
    for r in range(args.rounds):
        first = r * (n + w)  # other batches each round, the same ones for every case
        cache_dir = os.path.join(tmp, f"cache-{r}")
        cold = read_shard_set(url, "inpainting", ShardCache(cache_dir, 10 ** 12))
        figures["cold"].append(time_loader(cold, first + w, n, bs, 0)[0])  # no warm-up: every shard fetched
        warm = read_shard_set(url, "inpainting", ShardCache(cache_dir, 10 ** 12))
        for s in warm.shards:  # every shard already in the cache
            warm.cache.path(s)
        figures["warm"].append(time_loader(warm, first, n, bs, w)[0])
        rate, keys = time_loader(local, first, n, bs, w)
        figures["local"].append(rate)
        wanted = Counter(keys)
        drawn = [s for s in iter_samples(folder) for _ in range(wanted.get(s["__key__"], 0))]
        raw, floor = time_decoding(drawn)
        figures["raw"].append(raw)
        figures["floor"].append(floor)
    server.terminate()
    labels = {"cold": "loader, HTTP, cold cache", "warm": "loader, HTTP, warm cache", "local": "loader, local disk",
              "raw": "plain JPEG decoding", "floor": "floor: JPEG + level map + batch copy"}
    med = {k: (statistics.median(v[0] for v in figures[k]), statistics.median(v[1] for v in figures[k]))
           for k in figures}
    print(f"{'':<38} {'wall samples/s':>15} {'x plain':>8} {'CPU samples/s':>14} {'x plain':>8}   (median of "
          f"{args.rounds} rounds)")
    for k, label in labels.items():
        cpu = "" if k == "cold" else f"{med[k][1]:14.1f} {med[k][1] / med['raw'][1]:7.2f}x"  # cold: waits, not CPU
        print(f"{label:<38} {med[k][0]:15.1f} {med[k][0] / med['raw'][0]:7.2f}x {cpu}")
    print(f"loader / plain JPEG decoding, wall (CPU): local {med['local'][0] / med['raw'][0]:.2f}x "
          f"({med['local'][1] / med['raw'][1]:.2f}x), warm cache {med['warm'][0] / med['raw'][0]:.2f}x "
          f"({med['warm'][1] / med['raw'][1]:.2f}x), cold cache {med['cold'][0] / med['raw'][0]:.2f}x; "
          f"target >= 0.7x; floor {med['floor'][0] / med['raw'][0]:.2f}x ({med['floor'][1] / med['raw'][1]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
