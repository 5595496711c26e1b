"""Corpus build at growing size: throughput and peak memory of the whole `smartbrush build` command
(launcher and every worker process) at 1 and 2 workers, against a plain single-process loop over the
same per-element functions, on ../shared/data/coco_val2017_tiny replicated K times (new image and
annotation ids, same image files).

    python benchmarks/bench_scale.py [--sizes 1,4,12] [--resolution 512] [--samples-per-shard 100]

Prints one row per (size, workers): instances/s, peak RSS of the process tree (sampled every 0.1 s)
and of its largest process; the ratios against the targets; and a projection to COCO train2017 and
OpenImages v6 from the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import cv2
import psutil

from smartbrush.config import load_build_config, load_schedule
from smartbrush.pipeline.caption.captioners import LabelCaptioner
from smartbrush.pipeline.transforms.shard_writer import ShardRenderer
from smartbrush.pipeline.sources import coco
from smartbrush.pipeline.storage.shard_plan import image_key, plan_boundaries, shard_of
from smartbrush.schemas.shard_tar import shard_name

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_val2017_tiny"
COCO_TRAIN_INSTANCES, OPENIMAGES_INSTANCES = 860_001, 2_686_666


def replicate(src: pathlib.Path, k: int, dst: pathlib.Path) -> int:
    """K copies of every image and annotation under new ids; returns the annotation count."""
    data = json.loads(src.read_text())
    images, anns = [], []
    for r in range(k):
        images += [{**i, "id": i["id"] * 1000 + r} for i in data["images"]]
        anns += [{**a, "id": a["id"] * 1000 + r, "image_id": a["image_id"] * 1000 + r} for a in data["annotations"]]
    dst.write_text(json.dumps({**data, "images": images, "annotations": anns}))
    return len(anns)


def plain_loop(ann_path: str, images_dir: str, out: str, resolution: int, samples_per_shard: int) -> None:
    """The build's per-element functions and shard writer in one process, no Beam."""
    cv2.setNumThreads(1)  # what every worker runs with (pipeline/transforms/worker.py)
    cfg = load_build_config("default", {"render": {"resolution": resolution}})
    data = json.load(open(ann_path))
    cats = {c["id"]: c["name"] for c in data["categories"]}
    images = {str(i["id"]): coco.image_record(i, images_dir, "val2017") for i in data["images"]}
    by_image = defaultdict(list)
    for a in data["annotations"]:
        by_image[str(a["image_id"])].append(a)
    row_lists = []
    for image_id, anns in by_image.items():
        rows, _ = coco.coco_image_rows(images.get(image_id), anns, cats, cfg.filters, ann_path, "val2017")
        if rows:
            row_lists.append(rows)
    bounds = plan_boundaries([(image_key(rs), len(rs)) for rs in row_lists], samples_per_shard)
    shards = defaultdict(list)
    for rs in row_lists:
        shards[shard_of(image_key(rs), bounds)].append(rs)
    renderer = ShardRenderer(out, load_schedule(cfg.schedule), cfg.render, [LabelCaptioner()],
                             table_dir=os.path.join(out, "instances"))
    os.makedirs(os.path.join(out, "instances"))
    for index in sorted(shards):
        renderer.write(shard_name("inpainting", index), shards[index])


def measure(cmd: list[str]) -> tuple[float, float, float, list[float]]:
    """(seconds, peak RSS of the process tree in MB, peak RSS of its largest process in MB, CPU seconds
    of each process of the tree as last seen, largest first)."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"  (load average {load:.1f} before this run: other processes share the cores)")
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree_peak = proc_peak = 0
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        try:
            procs = [proc] + proc.children(recursive=True)
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            tree_peak, proc_peak = max(tree_peak, sum(rss)), max(proc_peak, max(rss, default=0))
        except psutil.Error:
            pass
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return time.perf_counter() - start, tree_peak / 2**20, proc_peak / 2**20, sorted(cpu.values(), reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,4,12", help="replication factors")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--instances-per-chunk", type=int, default=0,
                        help="pass --chunks ceil(instances / N) to the builds (0: one pipeline)")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"{DATA} is absent: this benchmark needs ../shared/data/coco_val2017_tiny")
        return 1
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-scale-"))
    exe = [sys.executable, "-m", "smartbrush.cli", "build"]
    rows = []
    print(f"R={args.resolution}, samples/shard={args.samples_per_shard}, cores={os.cpu_count()}")
    print(f"{'instances':>9} {'run':<12} {'seconds':>8} {'inst/s':>8} {'tree MB':>8} {'max proc MB':>11}")
    for k in [int(s) for s in args.sizes.split(",")]:
        ann = tmp / f"instances_x{k}.json"
        n = replicate(DATA / "annotations" / "instances_val2017.json", k, ann)
        flags = ["--coco-annotations", str(ann), "--coco-images", str(DATA / "val2017"), "--coco-split", "val2017",
                 "--resolution", str(args.resolution), "--samples-per-shard", str(args.samples_per_shard)]
        if args.instances_per_chunk:
            flags += ["--chunks", str(-(-n // args.instances_per_chunk))]
        t0 = time.perf_counter()
        plain_loop(str(ann), str(DATA / "val2017"), str(tmp / f"plain{k}"), args.resolution, args.samples_per_shard)
        t_plain = time.perf_counter() - t0
        result = {"instances": n, "plain": t_plain}
        print(f"{n:>9} {'plain loop':<12} {t_plain:>8.2f} {n / t_plain:>8.1f}")
        for w in (1, 2):
            out = tmp / f"w{w}x{k}"
            # One worker is Beam's default in-process mode; two are separate worker processes.
            mode = ["--direct_running_mode", "multi_processing"] if w > 1 else []
            t, tree, biggest, cpu = measure(exe + flags + ["--out", str(out), "--direct_num_workers", str(w)] + mode)
            result[w] = (t, tree, biggest)
            print(f"{n:>9} {f'{w} worker(s)':<12} {t:>8.2f} {n / t:>8.1f} {tree:>8.0f} {biggest:>11.0f}   "
                  f"CPU s per process: {', '.join(f'{c:.1f}' for c in cpu[:4])}")
        same = (tmp / f"w1x{k}" / "manifest.json").read_bytes() == (tmp / f"w2x{k}" / "manifest.json").read_bytes()
        print(f"{'':>9} 2 workers vs 1: {result[1][0] / result[2][0]:.2f}x (target >= 1.6x); 1 worker vs plain "
              f"loop: {result[1][0] / t_plain:.2f}x time (target <= 1.2x); manifests identical: {same}")
        rows.append(result)
        for d in (tmp / f"plain{k}", tmp / f"w1x{k}", tmp / f"w2x{k}"):
            shutil.rmtree(d)
    small, large = rows[0], rows[-1]
    for w in (1, 2):
        growth = large[w][1] / small[w][1] - 1
        print(f"peak RSS of the tree, {w} worker(s): {small[w][1]:.0f} MB at {small['instances']} instances, "
              f"{large[w][1]:.0f} MB at {large['instances']} ({growth:+.0%}; target < +25 % and < 1536 MB)")
    per_instance = large[2][0] / large["instances"]  # seconds of the 2-core machine per instance
    for name, n in (("COCO train2017", COCO_TRAIN_INSTANCES), ("OpenImages v6 train", OPENIMAGES_INSTANCES)):
        print(f"projection, {name} ({n:,} instances): {per_instance * n * 2 / 3600:.1f} core-hours "
              f"({per_instance * n / 3600:.1f} h on this 2-core machine); peak memory as measured here plus the "
              f"rows the local runner holds between stages (see README)")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
