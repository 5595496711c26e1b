"""Samples per second of `smartbrush eval` per method, and the metric overhead (FID feature extraction,
local crops, CLIP score, background measures, Frechet distances) as a fraction of sampling time.

Tiny random models on CPU (no weights are downloaded): a SmartBrush run folder, a 9-channel SD-inpainting
folder and a text-to-image SD folder; a BrushBench-format benchmark of random images and RLE masks
imported with `smartbrush bench import`; the tiny FID TorchScript and CLIP folder of the tests.

    python benchmarks/bench_eval.py [--samples 8] [--steps 10] [--resolution 64] [--fid-inception]

`--fid-inception` uses the 2048-d NVlabs-signature extractor instead of the 6-d one (the Frechet
distance's cost at the standard feature size). Prints one JSON line per method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the tests package

import numpy as np
from PIL import Image


def brushbench_folder(root: str, n: int, size: int = 512) -> str:
    import cv2

    from smartbrush.eval.importers import mask_to_rle_pairs

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    mapping = {}
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(root, "images", f"{i}.png"))
        m = np.zeros((size, size), np.uint8)
        cv2.ellipse(m, (256, 256), (60 + 10 * i, 120), 15 * i, 0, 360, 1, -1)
        mapping[str(i)] = {"image": f"images/{i}.png", "caption": f"object {i}", "inpainting_mask": mask_to_rle_pairs(m > 0),
                           "outpainting_mask": mask_to_rle_pairs(m == 0)}
    with open(os.path.join(root, "mapping_file.json"), "w") as f:
        json.dump(mapping, f)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--fid-inception", action="store_true")
    a = p.parse_args()

    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from smartbrush.cli import main as cli
    from smartbrush.eval import harness
    from smartbrush.eval.benchmark import read_benchmark
    from smartbrush.eval.config import load_eval_config
    from smartbrush.eval.extractors import load_clip_scorer, load_fid_extractor
    from smartbrush.eval.frechet import FeatureStats, fid_from_stats
    from smartbrush.eval.measures import box_crop
    from tests.test_eval import tiny_clip_folder
    from tests.test_sampling import (tiny_scheduler, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae,
                                     write_run_folder)
    from tests.tiny_extractors import tiny_fid_torchscript, tiny_nvlabs_inception

    with tempfile.TemporaryDirectory() as tmp:
        bench = os.path.join(tmp, "bench")
        assert cli(["bench", "import", "--format", "brushbench", brushbench_folder(os.path.join(tmp, "bb"), a.samples),
                    "--out", bench, "--resolution", str(a.resolution)]) == 0
        run = write_run_folder(os.path.join(tmp, "run"), levels=2)
        tok = tiny_tokenizer(os.path.join(tmp, "tok"))
        common = dict(vae=tiny_vae(1), text_encoder=tiny_text_encoder(tok, 1), tokenizer=tok, scheduler=tiny_scheduler(),
                      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        StableDiffusionInpaintPipeline(unet=tiny_unet(9, 4, None, 1), **common).save_pretrained(os.path.join(tmp, "inp"))
        StableDiffusionPipeline(unet=tiny_unet(4, 4, None, 2), **common).save_pretrained(os.path.join(tmp, "base"))
        fid_path = (tiny_nvlabs_inception(os.path.join(tmp, "inception.pt")) if a.fid_inception
                    else tiny_fid_torchscript(os.path.join(tmp, "fid.pt")))
        cfg = load_eval_config("", {"sd_inpaint": os.path.join(tmp, "inp"), "sd_base": os.path.join(tmp, "base"),
                                    "sampler": {"steps": a.steps, "device": "cpu"}, "levels": [1],
                                    "metrics": {"fid_torchscript": fid_path,
                                                "clip": tiny_clip_folder(os.path.join(tmp, "clip"))}})
        samples = read_benchmark(bench)
        fid = load_fid_extractor(fid_torchscript=fid_path)
        clip = load_clip_scorer(cfg.metrics.clip)
        real, real_local = FeatureStats(), FeatureStats()
        t = time.perf_counter()
        real.update(harness._features(fid, [s.image for s in samples]))
        real_local.update(harness._features(fid, [box_crop(s.image, s.box, cfg.metrics.local_size) for s in samples]))
        real_s = time.perf_counter() - t
        for method in ("smartbrush", "smartbrush-noswitch", "sd-inpaint", "sd-blend"):
            runner = harness.Runner(method, cfg, run)
            acc = harness.GroupAccumulator()
            sampling = metrics = 0.0
            for i, s in enumerate(samples):
                t = time.perf_counter()
                outs, preds = runner([s], 1, 1, [i])
                t1 = time.perf_counter()
                harness._measure(acc, [s], outs, preds, 1, fid, clip, cfg)
                metrics += time.perf_counter() - t1
                sampling += t1 - t
            t = time.perf_counter()
            fid_from_stats(real, acc.fid), fid_from_stats(real_local, acc.local_fid), clip.compute_and_reset()
            metrics += time.perf_counter() - t
            print(json.dumps({"method": method, "samples": len(samples), "resolution": a.resolution, "steps": a.steps,
                              "feature_size": fid.feature_size, "samples_per_s": round(len(samples) / (sampling + metrics), 3),
                              "sampling_s": round(sampling, 3), "metrics_s": round(metrics, 3),
                              "metric_overhead": round(metrics / sampling, 3), "real_features_s": round(real_s, 3)}))


if __name__ == "__main__":
    main()
