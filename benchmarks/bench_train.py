"""Training-side throughput, each against a baseline measured in the same run.

1. Loader: samples/s of the training stream (random access into the shards, JPEG + level-map decode,
   level and caption draws, crop to R, collation, CLIP tokenization) against plain JPEG decoding of
   the same images, one process. Target >= 0.7x.
2. UNet training step: the SmartBrush UNet (9 in, 5 out, level embedding, masked loss + DICE) against
   the same loop on a plain 4-channel text-to-image UNet of the same size (noise MSE). Target <= 1.05x
   time. `--size tiny` on CPU; `--device cuda --size sd-v1` gives SD v1.x size (random init from its
   config) at 512 px in bf16, with peak GPU memory per batch size.

    python benchmarks/bench_train.py --shards DIR [--batches 20] [--warmup-batches 20] [--batch-size 8] [--resolution 512]
    python benchmarks/bench_train.py --shards DIR --device cuda --size sd-v1 --batch-sizes 1,2,4,8
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
import tempfile
import time

import cv2
import numpy as np
import torch

from smartbrush.model.tiny import tiny_unet_config, write_tiny_tokenizer
from smartbrush.model.unet import split_output, to_smartbrush
from smartbrush.pipeline.render.samples import decode_jpeg
from smartbrush.pipeline.storage.manifest import read_manifest
from smartbrush.pipeline.storage.shard_reader import iter_samples
from smartbrush.train.objective import masked_mse, smartbrush_loss
from smartbrush.train.stream import BatchStream, read_shard_set

SD_V1_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def bench_loader(shards: str, batches: int, batch_size: int, resolution: int, warmup: int) -> None:
    sset = read_shard_set(shards, "inpainting")
    resolution = resolution or read_manifest(shards)["config"]["render"]["resolution"]
    stream = BatchStream([sset], [], batch_size=batch_size, resolution=resolution, num_levels=sset.num_levels)
    tok = write_tiny_tokenizer(tempfile.mkdtemp())
    # Once per process: the shards' indexes and the level-map decoder's cache of constant rows.
    for j in range(warmup):
        stream.batch(j)
    keys: list[str] = []
    t = time.perf_counter()
    for j in range(warmup, warmup + batches):
        b = stream.batch(j)
        keys += b["key"]
        tok(b["text"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    loader = batches * batch_size / (time.perf_counter() - t)
    # The baseline decodes exactly the JPEGs the loader drew (as often as it drew them).
    wanted = Counter(keys)
    jpgs = []
    for s in iter_samples(shards):
        jpgs += [s["jpg"]] * wanted.pop(s["__key__"], 0)
        if not wanted:
            break
    t = time.perf_counter()
    for data in jpgs:
        decode_jpeg(data)
    raw = len(jpgs) / (time.perf_counter() - t)
    print(f"loader: {loader:8.1f} samples/s (R={resolution}, batch {batch_size}, one process, after {warmup} "
          "warm-up batches)")
    print(f"raw JPEG decode of the same {len(jpgs)} images: {raw:8.1f} images/s")
    print(f"loader / raw decode: {loader / raw:.2f}x (target >= 0.7x)")


def _step(unet, smart: bool, batch: int, latent: int, ctx: int, device, dtype, levels: int = 5):
    x = torch.randn(batch, 4, latent, latent, device=device)
    text = torch.randn(batch, 77, ctx, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        if smart:
            m = (torch.rand(batch, 1, latent, latent, device=device) > 0.5).float()
            out = unet(torch.cat([x, m, x], 1), t, text, class_labels=torch.randint(0, levels, (batch,), device=device))
            noise, logit = split_output(out.sample)
            loss, _ = smartbrush_loss(noise.float(), x, m, logit.float(), m, torch.ones(batch, dtype=torch.bool, device=device))
        else:
            loss = masked_mse(unet(x, t, text).sample.float(), x, torch.ones_like(x[:, :1])).mean()
    loss.backward()


def bench_step(size: str, device: torch.device, batch_sizes: list[int], steps: int) -> None:
    from diffusers import UNet2DConditionModel

    cfg = SD_V1_UNET if size == "sd-v1" else tiny_unet_config()
    latent, ctx = (64, 768) if size == "sd-v1" else (32, 32)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for bs in batch_sizes:
        times = {}
        for smart in (False, True):
            torch.manual_seed(0)
            unet = UNet2DConditionModel(**cfg)
            if smart:
                to_smartbrush(unet, 5)
            unet.to(device).train()
            opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for i in range(steps + 2):
                if i == 2:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                _step(unet, smart, bs, latent, ctx, device, dtype)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[smart] = (time.perf_counter() - start) / steps
            peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
            print(f"{size} batch {bs} {'smartbrush (9->5, DICE)' if smart else 'text-to-image (4->4)':<24} "
                  f"{1 / times[smart]:7.2f} steps/s{peak}")
        print(f"{size} batch {bs}: smartbrush / text-to-image time {times[True] / times[False]:.3f}x (target <= 1.05x)")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", required=True, help="an inpainting shard set")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup-batches", type=int, default=20, help="loader batches before timing (per-process caches)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resolution", type=int, default=0, help="0: the shard set's own R (no resize)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=["tiny", "sd-v1"], default="tiny")
    p.add_argument("--batch-sizes", default="2,8")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    bench_loader(args.shards, args.batches, args.batch_size, args.resolution, args.warmup_batches)
    bench_step(args.size, torch.device(args.device), [int(b) for b in args.batch_sizes.split(",")], args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
