"""Tiny random Stable-Diffusion-v1-shaped models, built from small configs and saved locally.

They have the real classes and folder layout of a diffusers checkpoint (`unet/ vae/ text_encoder/
tokenizer/ scheduler/` and `model_index.json`), so every loading path the project has
(`from_pretrained(path)`) is exercised on them, on a CPU, in seconds, with nothing downloaded. The
VAE halves the resolution once (SD's divides by 8), which keeps 64 px training samples meaningful.
"""

from __future__ import annotations

import json
import os

import torch

TINY_VOCAB_CHARS = [chr(c) for c in range(33, 127)]


def write_tiny_tokenizer(folder: str):
    """A character-level CLIP BPE tokenizer (vocab.json + merges.txt), loaded back from the folder."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    vocab = {c: i for i, c in enumerate(TINY_VOCAB_CHARS)}
    vocab.update({c + "</w>": len(TINY_VOCAB_CHARS) + i for i, c in enumerate(TINY_VOCAB_CHARS)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)
    tok.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def tiny_unet_config(in_channels: int = 4, out_channels: int = 4, num_class_embeds: int | None = None) -> dict:
    return dict(sample_size=32, in_channels=in_channels, out_channels=out_channels, layers_per_block=1,
                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
                norm_num_groups=32, num_class_embeds=num_class_embeds)


def _write(out_dir: str, in_channels: int, pipeline_class: str, seed: int) -> str:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = write_tiny_tokenizer(os.path.join(out_dir, "tokenizer"))
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=64)
    unet = UNet2DConditionModel(**tiny_unet_config(in_channels))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1, num_train_timesteps=1000)
    text.save_pretrained(os.path.join(out_dir, "text_encoder"))
    vae.save_pretrained(os.path.join(out_dir, "vae"))
    unet.save_pretrained(os.path.join(out_dir, "unet"))
    scheduler.save_pretrained(os.path.join(out_dir, "scheduler"))
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1",
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)
    return out_dir


def build_tiny_sd(out_dir: str, seed: int = 0) -> str:
    """A tiny random text-to-image SD v1 folder (4-channel UNet), loadable by StableDiffusionPipeline."""
    return _write(out_dir, 4, "StableDiffusionPipeline", seed)


def build_tiny_sd_inpaint(out_dir: str, seed: int = 0) -> str:
    """A tiny random SD-inpainting folder (9-channel UNet), loadable by StableDiffusionInpaintPipeline."""
    return _write(out_dir, 9, "StableDiffusionInpaintPipeline", seed)
