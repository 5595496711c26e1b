"""Configuration of `smartbrush sample` and `smartbrush eval`: frozen dataclasses, unknown keys are errors."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import yaml

from smartbrush.config import from_dict, merge

SCHEDULERS = ("ddim", "ddpm", "pndm", "euler", "euler-ancestral", "dpm-solver++", "unipc", "lms")
DTYPES = ("float32", "float16", "bfloat16")
METHODS = ("smartbrush", "smartbrush-noswitch", "sd-inpaint", "sd-blend")
# How every method's decoded output becomes the scored image, the same for all methods:
#   given:  pasted into the input through the given mask (hard edge): outside it, the input's pixels
#   none:   the decoded image as it is (SmartBrush without its own pixel-space composite)
#   native: each method as it ships: SmartBrush composites through its predicted mask with a feathered
#           edge, the diffusers baselines return the decoded image (favours SmartBrush's background)
COMPOSITES = ("given", "none", "native")
PROTOCOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets", "eval")


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 50
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    scheduler: str = "ddim"  # any of SCHEDULERS, built from the checkpoint's scheduler config
    switch_at: float = 0.5  # fraction of the steps after which SmartBrush blends through its predicted mask
    mask_threshold: float = 0.5  # predicted mask = sigmoid(logit) > threshold
    mask_dilation: int = 0  # pixels
    feather: float = 2.0  # sigma (pixels) of the composite's soft edge
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "float32"


@dataclass(frozen=True)
class MetricsConfig:
    fid_weights: str = ""  # FID Inception weights file (torchmetrics + torch-fidelity); empty: see fid_torchscript
    fid_torchscript: str = ""  # a TorchScript feature extractor: uint8 (N, 3, H, W) -> (N, D)
    fid_antialias: bool = False  # False: numbers comparable with earlier papers
    fid_size: int = 0  # images resized to fid_size x fid_size (bicubic) before FID; 0: as generated
    local_size: int = 299  # box crops are resized to local_size x local_size for local FID and CLIP score
    clip: str = ""  # local CLIP folder (CLIPModel + processor); empty: no CLIP score
    psnr_cap_db: float = 100.0  # PSNR of an identical region


@dataclass(frozen=True)
class EvalConfig:
    methods: list = field(default_factory=list)  # empty: smartbrush, smartbrush-noswitch + baselines given paths
    sd_inpaint: str = ""  # 9-channel StableDiffusionInpaintPipeline folder (baseline "sd-inpaint")
    sd_base: str = ""  # text-to-image Stable Diffusion folder (baseline "sd-blend": latent blending)
    prompt: str = "label"  # label | caption
    levels: list = field(default_factory=list)  # benchmark levels to evaluate; empty: all
    precisions: list = field(default_factory=list)  # checkpoint level per benchmark level; empty: automatic
    limit: int = 0  # first N benchmark samples; 0: all
    batch_size: int = 1
    grid_samples: int = 6
    save_images: bool = False  # write every output to images/<method>/s<level>/<key>.png
    composite: str = "given"  # given | none | native (COMPOSITES): the same post-processing for every method
    protocol: str = ""  # the protocol preset these settings came from (presets/eval/<name>.yaml), if any
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_sampler(cfg: SamplerConfig, where: str = "sampler") -> None:
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"{where}.scheduler {cfg.scheduler!r}: one of {SCHEDULERS}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"{where}.dtype {cfg.dtype!r}: one of {DTYPES}")
    if cfg.steps < 1 or not 0.0 <= cfg.switch_at <= 1.0 or not 0.0 < cfg.mask_threshold < 1.0:
        raise ValueError(f"{where}: steps >= 1, switch_at in [0, 1] and mask_threshold in (0, 1) required")
    if cfg.mask_dilation < 0 or cfg.feather < 0:
        raise ValueError(f"{where}: mask_dilation and feather >= 0 required")


def _read_yaml(path: str) -> dict:
    if not path:
        return {}
    if not os.path.isfile(path):
        raise ValueError(f"config {path!r}: no such file")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def load_sampler_config(path: str = "", overrides: dict | None = None) -> SamplerConfig:
    cfg = from_dict(SamplerConfig, merge(_read_yaml(path), overrides or {}), path or "sampler")
    check_sampler(cfg)
    return cfg


def protocols() -> list[str]:
    """Names of the evaluation protocol presets (presets/eval/*.yaml)."""
    if not os.path.isdir(PROTOCOLS_DIR):
        return []
    return sorted(n[:-5] for n in os.listdir(PROTOCOLS_DIR) if n.endswith(".yaml"))


def protocol_path(name: str) -> str:
    if name not in protocols():
        raise ValueError(f"protocol {name!r}: one of {protocols()}")
    return os.path.join(PROTOCOLS_DIR, f"{name}.yaml")


def load_eval_config(path: str = "", overrides: dict | None = None, protocol: str = "") -> EvalConfig:
    """A protocol preset (when named), then the YAML at `path`, then `overrides` on top."""
    base = _read_yaml(protocol_path(protocol)) if protocol else {}
    data = merge(merge(base, _read_yaml(path)), overrides or {})
    if protocol:
        data["protocol"] = protocol
    cfg = from_dict(EvalConfig, data, path or protocol or "eval")
    check_sampler(cfg.sampler, "sampler")
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods {bad}: known methods {METHODS}")
    if "sd-inpaint" in cfg.methods and not cfg.sd_inpaint:
        raise ValueError("method sd-inpaint needs sd_inpaint (--sd-inpaint PATH: a 9-channel inpainting checkpoint)")
    if "sd-blend" in cfg.methods and not cfg.sd_base:
        raise ValueError("method sd-blend needs sd_base (--sd-base PATH: a text-to-image Stable Diffusion folder)")
    if cfg.composite not in COMPOSITES:
        raise ValueError(f"composite {cfg.composite!r}: one of {COMPOSITES}")
    if cfg.metrics.fid_size < 0 or 0 < cfg.metrics.fid_size < 16:
        raise ValueError("metrics.fid_size: 0 (as generated) or >= 16")
    if cfg.prompt not in ("label", "caption"):
        raise ValueError(f"prompt {cfg.prompt!r}: label or caption")
    if cfg.batch_size < 1 or cfg.limit < 0 or cfg.grid_samples < 0 or cfg.metrics.local_size < 16:
        raise ValueError("batch_size >= 1, limit >= 0, grid_samples >= 0, metrics.local_size >= 16 required")
    if any(not isinstance(v, int) for v in list(cfg.levels) + list(cfg.precisions)):
        raise ValueError("levels and precisions are lists of integers")
    return cfg


def resolved_methods(cfg: EvalConfig) -> list[str]:
    if cfg.methods:
        return list(cfg.methods)
    out = ["smartbrush", "smartbrush-noswitch"]
    if cfg.sd_inpaint:
        out.append("sd-inpaint")
    if cfg.sd_base:
        out.append("sd-blend")
    return out


def to_yaml(obj) -> str:
    return yaml.safe_dump(obj if isinstance(obj, dict) else dataclasses.asdict(obj), sort_keys=True)
