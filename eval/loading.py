"""Load a SmartBrush checkpoint and the baselines as diffusers pipelines, from local folders only."""

from __future__ import annotations

import json
import os

import torch

from smartbrush.model.sampling_pipeline import SmartBrushPipeline


def scheduler_class(name: str):
    import diffusers

    classes = {
        "ddim": diffusers.DDIMScheduler,
        "ddpm": diffusers.DDPMScheduler,
        "pndm": diffusers.PNDMScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "euler-ancestral": diffusers.EulerAncestralDiscreteScheduler,
        "dpm-solver++": diffusers.DPMSolverMultistepScheduler,
        "unipc": diffusers.UniPCMultistepScheduler,
        "lms": diffusers.LMSDiscreteScheduler,
    }
    if name not in classes:
        raise ValueError(f"scheduler {name!r}: one of {sorted(classes)}")
    return classes[name]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def checkpoint_folder(path: str) -> str:
    """The diffusers folder of a checkpoint: `path` itself, or a training run's `path/final`."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such folder")
    for folder in (path, os.path.join(path, "final")):
        if os.path.isfile(os.path.join(folder, "unet", "config.json")):
            return folder
    raise FileNotFoundError(f"checkpoint {path!r}: no unet/ (a diffusers folder, or a training run with final/)")


def load_smartbrush(path: str, scheduler: str = "ddim", device: str = "auto", dtype: str = "float32") -> SmartBrushPipeline:
    """A SmartBrushPipeline from a saved pipeline or a training run's folder (unet/ vae/ text_encoder/
    tokenizer/ scheduler/ with or without model_index.json); `scheduler` is built from its scheduler config."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = checkpoint_folder(path)
    torch_dtype = resolve_dtype(dtype)
    index = os.path.join(folder, "model_index.json")
    if os.path.isfile(index) and json.load(open(index)).get("_class_name") == SmartBrushPipeline.__name__:
        pipe = SmartBrushPipeline.from_pretrained(folder, dtype=torch_dtype)
    else:
        sched_dir = os.path.join(folder, "scheduler")
        pipe = SmartBrushPipeline(
            vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch_dtype),
            text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch_dtype),
            tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch_dtype),
            scheduler=DDIMScheduler.from_pretrained(sched_dir) if os.path.isdir(sched_dir) else DDIMScheduler(),
        )
    pipe.scheduler = scheduler_class(scheduler).from_config(pipe.scheduler.config)
    return pipe.to(resolve_device(device))


def load_sd_inpaint(path: str, scheduler: str = "ddim", device: str = "auto", dtype: str = "float32"):
    """diffusers' StableDiffusionInpaintPipeline from a 9-channel inpainting checkpoint folder."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(path, dtype=resolve_dtype(dtype), safety_checker=None,
                                                          feature_extractor=None, requires_safety_checker=False)
    if pipe.unet.config.in_channels != 9:
        raise ValueError(f"{path}: sd-inpaint needs a 9-channel inpainting UNet, this one has "
                         f"{pipe.unet.config.in_channels} (a text-to-image model is --sd-base)")
    pipe.scheduler = scheduler_class(scheduler).from_config(pipe.scheduler.config)
    return pipe.to(resolve_device(device))


def load_sd_blend(path: str, scheduler: str = "ddim", device: str = "auto", dtype: str = "float32"):
    """Plain Stable Diffusion with latent blending: diffusers' inpainting pipeline on a 4-channel UNet blends
    the re-noised image latents outside the mask after every step."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(path, dtype=resolve_dtype(dtype), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    if base.unet.config.in_channels != 4:
        raise ValueError(f"{path}: sd-blend needs a 4-channel text-to-image UNet, this one has "
                         f"{base.unet.config.in_channels}")
    pipe = StableDiffusionInpaintPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                          unet=base.unet, scheduler=scheduler_class(scheduler).from_config(base.scheduler.config),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to(resolve_device(device))
