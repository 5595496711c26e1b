"""Corpus-build throughput: the Beam build at 1 and 2 workers against a plain single-process loop
that calls the same per-element functions, on ../shared/data/coco_val2017_tiny.

    python benchmarks/bench_build.py [--repeat K] [--resolution 512]

--repeat K replicates the annotations K times (new annotation ids, same images) so that fixed
start-up costs weigh less. Prints instances/s for each and the ratios against the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict

from smartbrush.config import load_build_config, load_schedule
from smartbrush.pipeline.sources import coco
from smartbrush.pipeline.caption.captioners import LabelCaptioner, add_caption
from smartbrush.pipeline.commands.build import run_build
from smartbrush.pipeline.storage.manifest import counts, make_manifest, write_rejected_and_manifest
from smartbrush.pipeline.render.per_image import render_image
from smartbrush.pipeline.storage.shards import shard_name, write_shard

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_val2017_tiny"


def replicate(src: pathlib.Path, k: int, dst: pathlib.Path) -> pathlib.Path:
    data = json.loads(src.read_text())
    anns = []
    for r in range(k):
        for a in data["annotations"]:
            anns.append({**a, "id": a["id"] * 100 + r})
    data["annotations"] = anns
    dst.write_text(json.dumps(data))
    return dst


def plain_loop(ann_path: str, images_dir: str, out: str, cfg) -> int:
    """The same per-element functions, one process, no Beam."""
    schedule = load_schedule(cfg.schedule)
    data = json.load(open(ann_path))
    cats = {c["id"]: c["name"] for c in data["categories"]}
    images = {str(i["id"]): coco.image_record(i, images_dir, "val2017") for i in data["images"]}
    by_image = defaultdict(list)
    for a in data["annotations"]:
        by_image[str(a["image_id"])].append(a)
    samples, rejected, captioner = [], [], LabelCaptioner()
    for image_id, anns in by_image.items():
        rows, rej = coco.coco_image_rows(images.get(image_id), anns, cats, cfg.filters, ann_path, "val2017")
        rejected += rej
        if not rows:
            continue
        rows = [add_caption(r, c) for r, c in zip(rows, captioner.caption_rows(rows))]
        s, rej = render_image(rows, schedule, cfg.render)
        samples += s
        rejected += rej
    samples.sort(key=lambda kv: kv[0])
    n = cfg.shards.samples_per_shard
    shards = [write_shard(out, shard_name("inpainting", i // n), samples[i:i + n])[0] for i in range(0, len(samples), n)]
    c = counts(len(data["annotations"]), len(samples), rejected)
    write_rejected_and_manifest(out, rejected, lambda rf: make_manifest("inpainting", cfg.to_dict(), schedule.to_json(),
                                                                        [], c, shards, rf))
    return len(data["annotations"])


def timed(fn):
    t = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()
    if not DATA.exists():
        print(f"{DATA} is absent: this benchmark needs ../shared/data/coco_val2017_tiny")
        return 1
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-build-"))
    ann = replicate(DATA / "annotations" / "instances_val2017.json", args.repeat, tmp / "instances_val2017.json")
    images = str(DATA / "val2017")
    cfg = load_build_config("default", {"render": {"resolution": args.resolution}})
    flags = ["--coco-annotations", str(ann), "--coco-images", images, "--coco-split", "val2017",
             "--resolution", str(args.resolution)]
    os.makedirs(tmp / "plain")
    n, t_plain = timed(lambda: plain_loop(str(ann), images, str(tmp / "plain"), cfg))
    _, t_b1 = timed(lambda: run_build(flags + ["--out", str(tmp / "beam1"), "--direct_num_workers", "1"]) and n)
    _, t_b2 = timed(lambda: run_build(flags + ["--out", str(tmp / "beam2"), "--direct_num_workers", "2",
                                               "--direct_running_mode", "multi_processing"]) and n)
    same = (tmp / "beam1" / "manifest.json").read_bytes() == (tmp / "beam2" / "manifest.json").read_bytes()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"inputs: {n} annotations ({args.repeat}x coco_val2017_tiny), R={args.resolution}, cores={os.cpu_count()}")
    print(f"plain loop (1 process)   {t_plain:7.2f} s  {n / t_plain:8.1f} instances/s")
    print(f"beam, 1 worker           {t_b1:7.2f} s  {n / t_b1:8.1f} instances/s   "
          f"time vs plain loop {t_b1 / t_plain:.2f}x (target <= 1.3x)")
    print(f"beam, 2 workers (multi)  {t_b2:7.2f} s  {n / t_b2:8.1f} instances/s   "
          f"speed-up vs 1 worker {t_b1 / t_b2:.2f}x (target >= 1.7x)")
    print(f"beam 1 and 2 workers byte-identical manifests: {same}")
    print(f"peak memory: launcher {peak_mb:.0f} MB, largest worker process {peak_children_mb:.0f} MB")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
