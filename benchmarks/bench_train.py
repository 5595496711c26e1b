"""Training-side throughput, each against a baseline measured in the same run.

1. Loader: samples/s of the training stream (random access into the shards, JPEG + level-map decode,
   level and caption draws, crop to R, collation, CLIP tokenization) against plain JPEG decoding of
   the same images, one process. Target >= 0.7x.
2. UNet training step: the SmartBrush UNet (9 in, 5 out, level embedding, masked loss + DICE) against
   the same loop on a plain 4-channel text-to-image UNet of the same size (noise MSE). Target <= 1.05x
   time. `--size tiny` on CPU; `--device cuda --size sd-v1` gives SD v1.x size (random init from its
   config) at 512 px in bf16, with peak GPU memory per batch size.
3. Real size on CPU (`--size sd-v1 --device cpu`): a full-size SD v1 UNet, VAE and text encoder built
   from their real configs with random weights (nothing downloaded; a byte-level CLIP BPE tokenizer of
   CLIP's vocabulary size 49408; SD v1.4's scheduler config, which lacks `clip_sample`) trains 2 steps
   at 512 px through `smartbrush train` (batch 1, gradient checkpointing, fp32, EMA off), saves
   `final/`, and `smartbrush sample` runs 2 steps from it. Prints seconds per step, the peak RSS of
   each command and the UNet's parameter count against a plain 4-channel SD v1 UNet. Needs about
   16 GB of RAM and 20 GB of disk under --work.
4. Remote (`--remote`, benchmarks/bench_train_remote.py): the loader from a loopback HTTP server with a
   cold and a warm shard cache, against local disk and plain JPEG decoding of the same images.

    python benchmarks/bench_train.py --shards DIR [--batches 20] [--warmup-batches 20] [--batch-size 8] [--resolution 512]
    python benchmarks/bench_train.py --shards DIR --device cuda --size sd-v1 --batch-sizes 1,2,4,8
    python benchmarks/bench_train.py --size sd-v1 --device cpu [--work DIR] [--shards DIR]
    python benchmarks/bench_train.py --remote [--shards DIR] [--rounds 3] [--default-heap]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections import Counter
import tempfile
import time

import cv2
import numpy as np
import torch

from smartbrush.model.tiny import tiny_unet_config, write_tiny_tokenizer
from smartbrush.model.unet import split_output, to_smartbrush
from smartbrush.schemas.shard_sample import decode_jpeg
from smartbrush.schemas.manifest import read_manifest
from smartbrush.schemas.shard_set import iter_samples
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


SD_V1_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD_V1_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
# SD v1.4's scheduler_config.json: no clip_sample key, so a scheduler loaded from it clips unless corrected.
SD_V1_4_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.2.2", "beta_end": 0.012,
                     "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                     "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_byte_level_clip_tokenizer(folder: str):
    """A CLIP BPE tokenizer with CLIP's layout and vocabulary size (49408: 256 byte characters, the same
    with `</w>`, 48894 merges, `<|startoftext|>`, `<|endoftext|>`); the merges are pairs of byte
    characters, a stand-in for CLIP's learned ones."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    n_merges = CLIP_VOCAB_SIZE - len(vocab) - 2
    order = sorted(chars, key=lambda c: (not c.isalpha(), c))  # letters first: real words tokenize shorter
    merges = []
    for a in order:
        for b in order + [c + "</w>" for c in order]:
            if len(merges) == n_merges:
                break
            merges.append((a, b))
    vocab += [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == len(set(vocab)) == CLIP_VOCAB_SIZE
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)
    tok.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_random_sd_v1(folder: str) -> str:
    """A Stable Diffusion v1 folder (4-channel text-to-image UNet) of real size with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return folder
    tok = write_byte_level_clip_tokenizer(os.path.join(folder, "tokenizer"))
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(**SD_V1_TEXT, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(os.path.join(folder, "text_encoder"))
    AutoencoderKL(**SD_V1_VAE).save_pretrained(os.path.join(folder, "vae"))
    UNet2DConditionModel(**SD_V1_UNET).save_pretrained(os.path.join(folder, "unet"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SD_V1_4_SCHEDULER, f)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)
    return folder


def unet_parameter_counts(num_levels: int) -> tuple[int, int]:
    """(plain 4-channel SD v1 UNet, SmartBrush UNet) parameter counts, on the meta device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        plain = UNet2DConditionModel(**SD_V1_UNET)
        n_plain = sum(p.numel() for p in plain.parameters())
        smart = to_smartbrush(plain, num_levels)
        return n_plain, sum(p.numel() for p in smart.parameters())


def _run_measured(cmd: list[str], watch: str | None = None) -> dict:
    """Run `cmd`; its wall seconds, peak RSS (GiB) and, when `watch` is a losses.jsonl, the time at
    which each line appeared."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    seen: list[float] = []
    done = threading.Event()

    def poll():
        while not done.wait(0.2):
            if watch and os.path.exists(watch):
                with open(watch) as f:
                    n = sum(1 for _ in f)
                seen.extend([time.perf_counter()] * (n - len(seen)))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    thread.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit code {proc.returncode}")
    return {"seconds": time.perf_counter() - start, "start": start, "lines": seen,
            "peak_rss_gib": usage.ru_maxrss / 2**20}  # ru_maxrss is in KiB on Linux


def bench_real_size_cpu(work: str, shards: str | None) -> None:
    from PIL import Image

    from smartbrush.pipeline.commands.build import run_build
    from smartbrush.pipeline.commands.demo import sample_build_args

    os.makedirs(work, exist_ok=True)
    if not shards:
        shards = os.path.join(work, "shards-512")
        if not os.path.isfile(os.path.join(shards, "manifest.json")):
            run_build(sample_build_args(shards, os.path.join(work, "shards-512-in")) +
                      ["--config", "small", "--resolution", "512"])
    num_levels = read_shard_set(shards, "inpainting").num_levels
    base = os.path.join(work, "sd-v1-random")
    t = time.perf_counter()
    build_in_subprocess(base)
    print(f"random SD v1 (UNet, VAE, text encoder from their real configs) in {base}: "
          f"{time.perf_counter() - t:.0f} s", flush=True)

    run = os.path.join(work, "run")
    if os.path.isdir(run):
        import shutil

        shutil.rmtree(run)
    config = os.path.join(work, "sd-v1-cpu.yaml")
    with open(config, "w") as f:
        f.write(f"model: {{base: {json.dumps(base)}}}\n"
                "data: {resolution: 512, batch_size: 1, num_workers: 0, shards_per_batch: 1}\n"
                "optim: {learning_rate: 1.0e-5, warmup_steps: 0}\n"
                "max_steps: 2\ncheckpoint_every: 2\ncheckpoints_total_limit: 1\nlog_every: 1\n"
                "mixed_precision: 'no'\ngradient_checkpointing: true\nuse_ema: false\n")
    train = _run_measured([sys.executable, "-m", "smartbrush.cli", "train", "--config", config, "--inpainting-shards",
                           shards, "--out", run], watch=os.path.join(run, "logs", "losses.jsonl"))
    if len(train["lines"]) != 2:
        raise SystemExit(f"expected 2 steps in losses.jsonl, saw {len(train['lines'])}")
    step2 = train["lines"][1] - train["lines"][0]
    print(f"smartbrush train, 2 steps at 512 px (batch 1, gradient checkpointing, fp32 AdamW, EMA off): "
          f"{train['seconds']:.0f} s in all (loading, 2 steps, checkpoint-2 and final/ saved); step 2: "
          f"{step2:.1f} s; start to step 1 logged: {train['lines'][0] - train['start']:.0f} s; peak RSS "
          f"{train['peak_rss_gib']:.1f} GiB", flush=True)
    with open(os.path.join(run, "final", "scheduler", "scheduler_config.json")) as f:
        print(f"final/ scheduler: clip_sample={json.load(f)['clip_sample']} (the base's config has no clip_sample)")

    size = 512
    yy, xx = np.mgrid[0:size, 0:size]
    Image.fromarray(np.stack([xx // 2, yy // 2, np.full_like(xx, 90)], -1).astype(np.uint8)).save(
        os.path.join(work, "in.png"))
    mask = np.zeros((size, size), np.uint8)
    mask[128:384, 160:352] = 255
    Image.fromarray(mask).save(os.path.join(work, "mask.png"))
    sample = _run_measured([sys.executable, "-m", "smartbrush.cli", "sample", "--checkpoint", run, "--image",
                            os.path.join(work, "in.png"), "--mask", os.path.join(work, "mask.png"), "--prompt",
                            "a dog on a bench", "--precision", str(num_levels - 1), "--steps", "2", "--device", "cpu",
                            "--out", os.path.join(work, "sample.png")])
    print(f"smartbrush sample, 2 DDIM steps at 512 px from final/: {sample['seconds']:.0f} s, peak RSS "
          f"{sample['peak_rss_gib']:.1f} GiB")
    n_plain, n_smart = unet_parameter_counts(num_levels)
    print(f"UNet parameters: SmartBrush {n_smart:,} vs plain 4-channel SD v1 {n_plain:,}: +{n_smart - n_plain:,} "
          f"(+{100 * (n_smart - n_plain) / n_plain:.4f} %)")


def build_in_subprocess(base: str) -> None:
    """Build the random SD v1 folder in a child process, so its memory is not this process's."""
    code = ("import sys; sys.path.insert(0, %r); from bench_train import build_random_sd_v1; build_random_sd_v1(%r)"
            % (os.path.dirname(os.path.abspath(__file__)), base))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def main() -> int:
    if "--remote" in sys.argv[1:]:  # the loader from a loopback HTTP server: its own script and flags
        sys.argv.remove("--remote")
        import bench_train_remote

        return bench_train_remote.main()
    p = argparse.ArgumentParser()
    p.add_argument("--remote", action="store_true", help="loader samples/s from a loopback HTTP server, cold and "
                                                        "warm cache, against local disk and plain JPEG decoding "
                                                        "(benchmarks/bench_train_remote.py; its flags follow)")
    p.add_argument("--shards", help="an inpainting shard set (required but for --size sd-v1 --device cpu, which "
                                    "builds the embedded sample at 512 px when it is not given)")
    p.add_argument("--work", default="/tmp/smartbrush-bench-train", help="--size sd-v1 --device cpu: work folder")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup-batches", type=int, default=20, help="loader batches before timing (per-process caches)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resolution", type=int, default=0, help="0: the shard set's own R (no resize)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=["tiny", "sd-v1"], default="tiny")
    p.add_argument("--batch-sizes", default="2,8")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    if args.size == "sd-v1" and args.device == "cpu":
        bench_real_size_cpu(args.work, args.shards)
        return 0
    if not args.shards:
        p.error("--shards is required")
    bench_loader(args.shards, args.batches, args.batch_size, args.resolution, args.warmup_batches)
    bench_step(args.size, torch.device(args.device), [int(b) for b in args.batch_sizes.split(",")], args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
