"""Seconds per image: SmartBrushPipeline vs diffusers' StableDiffusionInpaintPipeline on the same parts.

Both pipelines share the VAE, text encoder, tokenizer and scheduler; the UNets have the same shape except
SmartBrush's extra mask-logit output channel and its precision-level class embedding. Random init (no
weights are downloaded): timings only.

    python benchmarks/bench_sample.py                                  # CPU, tiny models, 64 px, 20 steps
    python benchmarks/bench_sample.py --device cuda --size sd-v1       # SD v1.x size, bf16, 512 px, 50 DDIM steps

`--size tiny` uses smartbrush.model.tiny (the `tiny` training preset's model) when it is importable,
else an equivalent tiny SD v1-shaped set built here. Prints one JSON line per pipeline and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image


def _tokenizer(folder: str):
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)


SIZES = {
    # the shapes of the tiny training preset: two UNet levels, 32/64 channels
    "tiny": dict(unet=dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32),
                 vae=dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32),
                 text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           vocab_size=1000)),
    # Stable Diffusion v1.x (CompVis / runwayml configs)
    "sd-v1": dict(unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                            attention_head_dim=8),
                  vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                           up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2),
                  text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                            vocab_size=49408)),
}


def build_parts(size: str, folder: str, levels: int):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if size == "tiny":
        try:
            from smartbrush.model.tiny import build_tiny_sd
        except ImportError:
            build_tiny_sd = None
        if build_tiny_sd is not None:
            from transformers import CLIPTokenizer

            build_tiny_sd(os.path.join(folder, "sd"), seed=0)
            src = os.path.join(folder, "sd")
            unet4 = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
            shape = {k: v for k, v in unet4.config.items() if not k.startswith("_")}
            shape.update(in_channels=9)
            torch.manual_seed(0)
            return dict(vae=AutoencoderKL.from_pretrained(src, subfolder="vae"),
                        text_encoder=CLIPTextModel.from_pretrained(src, subfolder="text_encoder"),
                        tokenizer=CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"),
                        scheduler=DDIMScheduler.from_pretrained(src, subfolder="scheduler"),
                        unet_sb=UNet2DConditionModel(**{**shape, "out_channels": 5, "num_class_embeds": levels}),
                        unet_sd=UNet2DConditionModel(**{**shape, "out_channels": 4, "num_class_embeds": None}),
                        source="smartbrush.model.tiny.build_tiny_sd")
    cfg = SIZES[size]
    tok = _tokenizer(folder)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **cfg["text"]))
    vae = AutoencoderKL(latent_channels=4, **cfg["vae"])
    sample = 64 if size == "sd-v1" else 32
    unet_sb = UNet2DConditionModel(sample_size=sample, in_channels=9, out_channels=5, num_class_embeds=levels, **cfg["unet"])
    unet_sd = UNet2DConditionModel(sample_size=sample, in_channels=9, out_channels=4, **cfg["unet"])
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return dict(vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched, unet_sb=unet_sb, unet_sd=unet_sd,
                source=f"random init, {size} configuration")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 64 tiny, 512 sd-v1)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 20 tiny, 50 sd-v1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--levels", type=int, default=5, help="precision levels S + 1 of the SmartBrush UNet")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = p.parse_args(argv)
    from diffusers import StableDiffusionInpaintPipeline

    from smartbrush.model.sampling_pipeline import SmartBrushPipeline

    if a.threads:
        torch.set_num_threads(a.threads)
    res = a.resolution or (64 if a.size == "tiny" else 512)
    steps = a.steps or (20 if a.size == "tiny" else 50)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")]
    with tempfile.TemporaryDirectory() as tmp:
        parts = build_parts(a.size, tmp, a.levels)
    common = {k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "scheduler")}
    sb = SmartBrushPipeline(unet=parts["unet_sb"], **common).to(a.device, dtype)
    sd = StableDiffusionInpaintPipeline(unet=parts["unet_sd"], safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False, **common).to(a.device, dtype)
    for pipe in (sb, sd):
        pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8))
    mask = np.zeros((res, res), np.uint8)
    mask[res // 4: 3 * res // 4, res // 4: 3 * res // 4] = 255
    mask = Image.fromarray(mask)
    args = dict(prompt="a red ball on the grass", image=image, mask_image=mask, height=res, width=res,
                num_inference_steps=steps, guidance_scale=7.5, output_type="np")

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    def time_one(name, call):
        call()  # warm-up
        sync()
        times = []
        for i in range(a.repeats):
            t0 = time.perf_counter()
            call(i)
            sync()
            times.append(time.perf_counter() - t0)
        row = {"pipeline": name, "size": a.size, "device": a.device, "dtype": str(dtype).replace("torch.", ""),
               "resolution": res, "steps": steps, "repeats": a.repeats, "seconds_per_image": statistics.median(times),
               "all": [round(t, 4) for t in times], "models": parts["source"]}
        print(json.dumps(row))
        return row["seconds_per_image"]

    gen = lambda i=0: torch.Generator("cpu").manual_seed(i)  # noqa: E731
    t_sb = time_one("SmartBrushPipeline", lambda i=0: sb(**args, precision=a.levels - 1, generator=gen(i)))
    t_sd = time_one("StableDiffusionInpaintPipeline", lambda i=0: sd(**args, generator=gen(i)))
    print(json.dumps({"ratio_smartbrush_over_sd_inpaint": round(t_sb / t_sd, 4),
                      "target": "<= 1.05 on GPU at SD v1.x size"}))
    if a.device.startswith("cuda"):
        print(json.dumps({"peak_cuda_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
