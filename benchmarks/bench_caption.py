"""Throughput of `smartbrush caption --captioner blip` (decode, crop, preprocess, RunInference,
join, table write) against the model's own generate() on pre-made batches of the same crops.

    python benchmarks/bench_caption.py                      # tiny random BLIP on CPU
    python benchmarks/bench_caption.py --size large --device cuda --dtype bfloat16 \\
        --batch-sizes 16,64,256 --images 2000 --workers 8 --share-model

`large` is Salesforce/blip-image-captioning-large's architecture (ViT-L/16 at 384, BERT-base decoder)
with random weights, written locally: same FLOPs, nothing downloaded. Random weights rarely emit the
end token, so captions run to --max-new-tokens: the worst case. The input is a synthetic COCO set
(640 x 480 JPEGs, --instances-per-image polygons each) ingested once, untimed.

Figures: whole-stage crops/s (wall clock of the caption job, Beam start-up and model loads
included); start-up (the same job on a one-image table) and steady-state crops/s net of it; the
baseline: generate() in this process on tensors already on the device (on CPU scaled by --workers,
the pipeline's parallelism); ratio = pipeline / baseline (1.0: no overhead). With --device cuda it
also samples GPU utilisation with nvidia-smi. Peak RSS of the largest worker process is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
from PIL import Image, ImageDraw


def synthetic_coco(root: str, n_images: int, per_image: int, seed: int = 0) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    images, anns = [], []
    w, h = 640, 480
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx, yy, (xx + yy) // 2], axis=2)
    for i in range(n_images):
        colours = (base * rng.uniform(0.1, 0.5, 3) + rng.integers(0, 128, 3)).astype(np.uint8)
        im = Image.fromarray(colours)
        draw = ImageDraw.Draw(im)
        for j in range(per_image):
            side = int(rng.integers(16, 300))
            x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            poly = [x0, y0, x0 + side, y0 + side // 3, x0 + side // 2, y0 + side]
            draw.polygon(poly, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            anns.append({"id": i * 1000 + j, "image_id": i, "category_id": 1 + j % 3, "iscrowd": 0,
                         "segmentation": [poly], "area": 0, "bbox": [0, 0, 0, 0]})
        name = f"{i:08d}.jpg"
        im.save(os.path.join(images_dir, name), quality=90)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
    path = os.path.join(root, "instances_bench.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "car"}]}, f)
    return path, images_dir


class GpuSampler:
    """Mean and max GPU utilisation (nvidia-smi, every 0.2 s) while running."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _loop(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except Exception:
                pass
            self._stop.wait(0.2)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "n/a"
        return f"mean {np.mean(self.samples):.0f}% max {np.max(self.samples):.0f}%"


def caption_flags(args, model_dir: str, batch_size: int) -> list[str]:
    flags = ["--captioner", "blip", "--model", model_dir, "--device", args.device, "--dtype", args.dtype,
             "--max-new-tokens", str(args.max_new_tokens), "--min-batch-size", str(batch_size),
             "--max-batch-size", str(batch_size), "--cpu-threads", str(args.cpu_threads),
             "--direct_num_workers", str(args.workers), "--direct_running_mode", "multi_processing"]
    return flags + (["--share-model"] if args.share_model else [])


def run_pipeline(table: str, out: str, flags: list[str], gpu: bool):
    from smartbrush.pipeline.commands import caption as caption_job

    shutil.rmtree(out, ignore_errors=True)
    with GpuSampler(gpu) as sampler:
        t0 = time.perf_counter()
        result = caption_job.run(["--table", table, "--out", out, *flags])
        wall = time.perf_counter() - t0
    return wall, caption_job.caption_metrics(result), sampler.summary()


def premade_batches(table: str, captioner, batch_size: int, dtype):
    """The table's crops, made and normalised before timing, as device tensors."""
    import glob

    import pyarrow.parquet as pq

    from smartbrush.config import RenderConfig
    from smartbrush.pipeline.caption.blip import normalise_batch
    from smartbrush.pipeline.imaging.images import load_image_and_hash

    rows = pq.read_table(sorted(glob.glob(os.path.join(table, "instances-*.parquet")))).to_pylist()
    crops, cache = [], {}
    for r in sorted(rows, key=lambda r: r["image_path"]):
        if r["image_path"] not in cache:
            size = (r["image_width"], r["image_height"])
            cache = {r["image_path"]: load_image_and_hash(r["image_path"], size, RenderConfig())[0]}
        crops.append(captioner.crop_input(cache[r["image_path"]], r))
    device = captioner.runtime.device
    return [normalise_batch(crops[i:i + batch_size], captioner.image, device, dtype)
            for i in range(0, len(crops), batch_size)], len(crops)


def baseline(runtime, batches, n_crops: int, max_new_tokens: int) -> float:
    """crops/s of model.generate() alone on pre-made device tensors (one warm-up batch first)."""
    import torch

    def sync():
        if runtime.device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        runtime.model.generate(pixel_values=batches[0], max_new_tokens=max_new_tokens, do_sample=False)
        sync()
        t0 = time.perf_counter()
        for b in batches:
            runtime.model.generate(pixel_values=b, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
        sync()
    return n_crops / (time.perf_counter() - t0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "large"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    parser.add_argument("--batch-sizes", default="8,32", help="comma-separated RunInference batch sizes")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--images", type=int, default=200, help="synthetic 640 x 480 images")
    parser.add_argument("--instances-per-image", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes (--direct_num_workers)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads per worker on CPU")
    parser.add_argument("--share-model", action="store_true", help="one model per machine (RunInference)")
    parser.add_argument("--workdir", help="keep inputs and outputs here (default: a temp folder, deleted)")
    args = parser.parse_args(argv)
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"

    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    from smartbrush.pipeline.caption.blip import BlipCaptioner, GenerationSettings, RuntimeSettings
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's root
    from tests.tiny_blip import write_random_blip  # the random BLIP the tests use
    from smartbrush.pipeline.commands.build import run_ingest

    work = args.workdir or tempfile.mkdtemp(prefix="bench_caption_")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        model_dir = os.path.join(work, f"blip-{args.size}")
        if not os.path.exists(os.path.join(model_dir, "config.json")):
            write_random_blip(model_dir, size=args.size, init_std=0.2 if args.size == "tiny" else 0.02)
        tables = {}
        for name, n in (("startup", 1), ("bench", args.images)):
            ann, img = synthetic_coco(os.path.join(work, f"coco_{name}"), n, args.instances_per_image)
            tables[name] = os.path.join(work, f"table_{name}")
            if not os.path.exists(os.path.join(tables[name], "manifest.json")):
                run_ingest(["--coco-annotations", ann, "--coco-images", img, "--out", tables[name], "--min-area", "1",
                            "--min-box-side", "1", "--direct_num_workers", "2",
                            "--direct_running_mode", "multi_processing"], source="coco")
        print(f"setup (model, synthetic COCO, ingest): {time.perf_counter() - t0:.1f} s", flush=True)

        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        threads = args.cpu_threads if args.cpu_threads > 0 else torch.get_num_threads()
        captioner = BlipCaptioner.from_pretrained(
            model_dir, generation=GenerationSettings(max_new_tokens=args.max_new_tokens, dtype=args.dtype),
            runtime=RuntimeSettings(device=args.device, cpu_threads=threads))
        runtime = captioner.load_runtime()
        gpu = args.device == "cuda"
        where = torch.cuda.get_device_name() if gpu else f"{threads} thread(s)"
        print(f"size {args.size}, device {args.device} ({where}), "
              f"dtype {args.dtype}, {args.workers} workers, max_new_tokens {args.max_new_tokens}")
        results = []
        for bs in batch_sizes:
            flags = caption_flags(args, model_dir, bs)
            t_start, _, _ = run_pipeline(tables["startup"], os.path.join(work, "out_startup"), flags, False)
            wall, metrics, util = run_pipeline(tables["bench"], os.path.join(work, "out_bench"), flags, gpu)
            n = metrics.get("crops_captioned", 0)
            n_start = 1 * args.instances_per_image
            steady = (n - n_start) / max(wall - t_start, 1e-9)
            batches, n_crops = premade_batches(tables["bench"], captioner, bs, runtime.dtype)
            base = baseline(runtime, batches, n_crops, args.max_new_tokens)
            base_parallel = base * (args.workers if not gpu else 1)
            row = {"batch_size": bs, "crops": n, "wall_s": round(wall, 2), "startup_s": round(t_start, 2),
                   "pipeline_crops_per_s": round(n / wall, 1), "steady_crops_per_s": round(steady, 1),
                   "generate_crops_per_s": round(base_parallel, 1),
                   "ratio_whole": round(n / wall / base_parallel, 3), "ratio_steady": round(steady / base_parallel, 3),
                   "mean_batch": round(metrics.get("batch_size", {}).get("mean", 0.0), 1), "gpu_util": util}
            results.append(row)
            print(f"batch {bs:>4}: {n} crops in {wall:.1f} s -> {n / wall:.1f} crops/s whole stage "
                  f"(start-up {t_start:.1f} s; steady {steady:.1f} crops/s); generate() alone "
                  f"{base_parallel:.1f} crops/s{' (x' + str(args.workers) + ' workers)' if not gpu else ''}; "
                  f"ratio {row['ratio_whole']:.3f} whole, {row['ratio_steady']:.3f} steady; "
                  f"mean batch {row['mean_batch']}; GPU {util}", flush=True)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of the largest worker process: {peak_mb:.0f} MB")
        print("RESULT " + json.dumps({"size": args.size, "device": args.device, "dtype": args.dtype,
                                      "workers": args.workers, "results": results,
                                      "peak_worker_rss_mb": round(peak_mb)}))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
