"""Training configuration: frozen dataclasses, presets in presets/train/, unknown keys are errors."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources

import yaml

from smartbrush.config import from_dict, merge

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    base: str = ""  # SD v1.x diffusers folder or hub id (4-ch text-to-image or 9-ch inpainting); "tiny": built locally
    num_levels: int = 0  # S + 1; 0: from the inpainting shard sets


@dataclass(frozen=True)
class DataConfig:
    resolution: int = 512
    batch_size: int = 4  # per device and micro-step
    p_inpainting: float = 0.8  # the paper's 80 % inpainting / 20 % text-to-image
    p_label: float = 0.5  # class label vs model (BLIP) caption
    level: int = -1  # -1: uniform over 0..S; else a fixed precision level
    text_dropout: float = 0.1  # empty prompt, for classifier-free guidance
    shards_per_batch: int = 4
    num_workers: int = 2


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-5
    warmup_steps: int = 500
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    max_steps: int = 10000
    gradient_accumulation_steps: int = 1
    # > 0: samples per optimizer step over all processes; gradient_accumulation_steps is then derived as
    # global_batch_size / (data.batch_size x processes) at start (an error when it does not divide)
    global_batch_size: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    dice_weight: float = 0.01  # the paper's lambda
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3
    log_every: int = 10

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _preset_path(name: str):
    return resources.files("smartbrush").joinpath("presets", "train", f"{name}.yaml")


def list_presets() -> list[str]:
    folder = resources.files("smartbrush").joinpath("presets", "train")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_train_config(preset_or_path: str, overrides: dict | None = None) -> TrainConfig:
    if os.path.exists(preset_or_path):
        with open(preset_or_path) as f:
            data, where = yaml.safe_load(f) or {}, preset_or_path
    elif _preset_path(preset_or_path).is_file():
        data, where = yaml.safe_load(_preset_path(preset_or_path).read_text()) or {}, f"preset {preset_or_path}"
    else:
        raise ValueError(f"unknown training preset or file {preset_or_path!r}; presets: {list_presets()}")
    cfg = from_dict(TrainConfig, merge(data, overrides or {}), where)
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"{where}.mixed_precision: one of {MIXED_PRECISION}")
    if not 0 <= cfg.data.p_inpainting <= 1 or not 0 <= cfg.data.p_label <= 1 or not 0 <= cfg.data.text_dropout < 1:
        raise ValueError(f"{where}.data: p_inpainting, p_label in [0, 1] and text_dropout in [0, 1) required")
    if cfg.max_steps < 1 or cfg.data.batch_size < 1 or cfg.gradient_accumulation_steps < 1:
        raise ValueError(f"{where}: max_steps, data.batch_size and gradient_accumulation_steps >= 1 required")
    if cfg.global_batch_size < 0 or cfg.global_batch_size % cfg.data.batch_size:
        raise ValueError(f"{where}.global_batch_size: 0 or a multiple of data.batch_size ({cfg.data.batch_size})")
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=True)
