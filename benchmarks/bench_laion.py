"""Images/s of `smartbrush laion` against img2dataset.download called directly with the same settings,
both against the same local HTTP server (127.0.0.1) serving real JPEGs. Target: ratio <= 1.1.

    python benchmarks/bench_laion.py [--rows 2000] [--processes 2] [--threads 32] [--resolution 256]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

COCO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "coco_val2017_tiny", "val2017")


def jpegs(count: int = 32) -> list[bytes]:
    """COCO photographs when ../shared is there, else 640 x 480 gradient-and-noise JPEGs."""
    if os.path.isdir(COCO):
        names = sorted(os.listdir(COCO))[:count]
        return [open(os.path.join(COCO, n), "rb").read() for n in names]
    import numpy as np
    from PIL import Image

    rng, out = np.random.default_rng(0), []
    for i in range(count):
        yy, xx = np.mgrid[0:480, 0:640]
        rgb = np.stack([xx * 255 // 640, yy * 255 // 480, np.full_like(xx, 7 * i)], -1)
        rgb = np.clip(rgb + rng.integers(-25, 25, rgb.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Images(BaseHTTPRequestHandler):
    images: list[bytes] = []
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.images[int(self.path.rsplit("/", 1)[1].split(".")[0]) % len(self.images)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # socketserver's 5 refuses connections under 64 concurrent downloads


def serve() -> tuple[ThreadingHTTPServer, str]:
    Images.images = jpegs()
    httpd = Server(("127.0.0.1", 0), Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def laion_parquet(path: str, base: str, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "URL": [f"{base}/img/{i}.jpg" for i in range(rows)], "TEXT": [f"caption of image {i}" for i in range(rows)],
        "WIDTH": pa.array([640] * rows, pa.int64()), "HEIGHT": pa.array([640] * rows, pa.int64()),
        "similarity": [0.31] * rows, "punsafe": [0.01] * rows, "pwatermark": [0.02] * rows,
        "AESTHETIC_SCORE": [6.0] * rows, "hash": pa.array(range(rows), pa.int64())}), path)


def run_ours(parquet: str, out: str, args) -> int:
    from smartbrush.pipeline.commands import laion

    manifest = laion.run(["--parquet", parquet, "--out", out, "--resolution", str(args.resolution),
                          "--samples-per-shard", str(args.samples_per_shard), "--processes", str(args.processes),
                          "--threads", str(args.threads), "--retries", "0", "--timeout", "10"])
    return manifest["counts"]["written"]


def run_direct(parquet: str, out: str, args) -> int:
    """img2dataset.download with the keyword arguments `smartbrush laion` passes it."""
    import json

    from img2dataset import download

    from smartbrush.pipeline.commands import laion

    ns = laion.build_parser().parse_args(
        ["--parquet", parquet, "--out", out, "--resolution", str(args.resolution), "--samples-per-shard",
         str(args.samples_per_shard), "--processes", str(args.processes), "--threads", str(args.threads),
         "--retries", "0", "--timeout", "10"])
    kwargs = laion.img2dataset_kwargs(parquet, out, ns, ["WIDTH", "HEIGHT", "similarity", "punsafe", "pwatermark",
                                                         "AESTHETIC_SCORE", "hash"])
    previous = signal.getsignal(signal.SIGINT)
    try:
        download(**kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)
    return sum(json.load(open(os.path.join(out, n)))["successes"] for n in os.listdir(out) if n.endswith("_stats.json"))


def own_work_seconds(parquet: str, out: str, args) -> float:
    """The time `smartbrush laion` spends outside img2dataset, re-timed on a finished output: filtering
    into the download list, folding the shards, writing rejected.parquet and the manifest."""
    from smartbrush.pipeline.commands import laion
    from smartbrush.pipeline.sources import laion_filter
    from smartbrush.pipeline.storage import manifest

    t0 = time.perf_counter()
    n_in, n_kept, rejected = laion_filter.write_download_list(
        [parquet], os.path.join(out, "again.parquet"), laion_filter.LaionFilters(), laion_filter.Columns())
    shards, written, failed = laion.fold_outputs(out, os.path.join(out, laion.DOWNLOAD_LIST), n_kept,
                                                 args.samples_per_shard)
    c = manifest.counts(n_in, written, rejected + failed)
    manifest.write_rejected_and_manifest(out, rejected + failed, lambda rf: manifest.make_manifest(
        "text_to_image", {}, None, [manifest.input_file_entry(parquet)], c, shards, rf))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--samples-per-shard", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the best is reported")
    args = p.parse_args()
    httpd, base = serve()
    tmp = tempfile.mkdtemp(prefix="bench_laion_")
    try:
        parquet = os.path.join(tmp, "laion.parquet")
        laion_parquet(parquet, base, args.rows)
        best = {"smartbrush laion": float("inf"), "img2dataset.download": float("inf")}
        for r in range(args.repeats):
            pair = [("img2dataset.download", run_direct), ("smartbrush laion", run_ours)]
            for name, fn in (pair if r % 2 == 0 else pair[::-1]):  # alternate which goes first
                out = os.path.join(tmp, f"{name.split()[0]}-{r}")
                t0 = time.perf_counter()
                n = fn(parquet, out, args)
                seconds = time.perf_counter() - t0
                if n != args.rows:
                    raise SystemExit(f"{name}: {n} images of {args.rows}")
                best[name] = min(best[name], seconds)
                print(f"run {r} {name}: {n} images in {seconds:.2f} s = {n / seconds:.1f} images/s", flush=True)
                if name == "smartbrush laion" and r == args.repeats - 1:
                    own = own_work_seconds(parquet, out, args)
                shutil.rmtree(out)
        ours, direct = args.rows / best["smartbrush laion"], args.rows / best["img2dataset.download"]
        print(f"\n{args.rows} images, {args.processes} processes x {args.threads} threads, R = {args.resolution}, "
              f"{os.cpu_count()} cores")
        print(f"img2dataset.download: {direct:.1f} images/s")
        print(f"smartbrush laion:     {ours:.1f} images/s (filter + download + manifest)")
        print(f"time ratio smartbrush/img2dataset: {direct / ours:.3f}x (target <= 1.1x)")
        print(f"smartbrush's own work around img2dataset (filter, fold, manifest): {own:.2f} s = "
              f"{own * direct / args.rows:.3f}x img2dataset's time (the ratio without download noise: "
              f"{1 + own * direct / args.rows:.3f}x)")
    finally:
        httpd.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
