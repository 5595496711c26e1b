"""Job configuration: frozen dataclasses, named presets, YAML overrides with unknown keys rejected."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import yaml

from smartbrush.schemas import mask_schedule as schedule_schema


@dataclass(frozen=True)
class FilterConfig:
    include_crowd: bool = False  # crowd annotations are filtered (reason "crowd") unless True
    min_area: int = 64  # exact-mask pixels at source resolution
    min_box_side: int = 8  # shorter side of the mask's box, source pixels
    max_instances_per_image: int = 0  # keep the N largest instances of an image; 0 = all


CROP_POLICIES = ("scene", "object")


@dataclass(frozen=True)
class RenderConfig:
    resolution: int = 512  # R: the training crop and every mask are R x R
    # scene: the largest square of the image (its shorter side) that holds the object's box, as the
    # paper trains on whole images; object: a window of `context` x the box (docs/crop-policy.md)
    crop_policy: str = "scene"
    context: float = 1.5  # object policy: crop side = context * longer box side (at least the box itself)
    min_crop_fraction: float = 0.25  # object policy: crop side >= this fraction of the image's shorter side
    min_object_size_at_resolution: int = 16  # filter objects whose box's longer side is smaller in the R x R crop
    jpeg_quality: int = 95
    max_image_pixels: int = 100_000_000  # larger images are rejected (decompression bombs)
    exif: str = "auto"  # auto: pick the frame that matches the annotation's size; apply; ignore


@dataclass(frozen=True)
class ShardConfig:
    samples_per_shard: int = 1000
    prefix: str = "inpainting"
    # Run the build as this many pipelines, one after the other, each over the source images whose
    # id hashes into it: the local runner holds each one's rows, not the corpus's (see README).
    chunks: int = 1


@dataclass(frozen=True)
class BuildConfig:
    schedule: str = "smartbrush"  # preset name or YAML path
    captioner: str = "label"
    filters: FilterConfig = field(default_factory=FilterConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_dict(cls, data: dict, where: str):
    """A frozen config dataclass from a mapping: unknown keys and wrong types are errors naming the
    key; nested dataclasses recurse. Shared by every config of the project."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, list):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}.{name}: expected a list, got {value!r}")
            kwargs[name] = list(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{name}: expected true or false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            kwargs[name] = float(value)
        elif not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
            raise ValueError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config_from_dict(data: dict, where: str = "config") -> BuildConfig:
    cfg = from_dict(BuildConfig, data, where)
    if cfg.render.exif not in ("auto", "apply", "ignore"):
        raise ValueError(f"{where}.render.exif: one of auto, apply, ignore")
    if cfg.render.crop_policy not in CROP_POLICIES:
        raise ValueError(f"{where}.render.crop_policy: one of {', '.join(CROP_POLICIES)}, got {cfg.render.crop_policy!r}")
    if cfg.render.min_object_size_at_resolution < 0:
        raise ValueError(f"{where}.render.min_object_size_at_resolution: >= 0 required (0 keeps every object)")
    if cfg.render.resolution < 16 or cfg.shards.samples_per_shard < 1 or cfg.shards.chunks < 1:
        raise ValueError(f"{where}: resolution >= 16, samples_per_shard >= 1 and chunks >= 1 required")
    return cfg


def _preset_text(kind: str, name: str) -> str:
    path = resources.files("smartbrush").joinpath("presets", kind, f"{name}.yaml")
    if not path.is_file():
        raise ValueError(f"unknown {kind} preset {name!r}; presets: {list_presets(kind)}")
    return path.read_text()


def list_presets(kind: str) -> list[str]:
    folder = resources.files("smartbrush").joinpath("presets", kind)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_build_config(preset_or_path: str = "default", overrides: dict | None = None) -> BuildConfig:
    """A named preset or a YAML file, then `overrides` (a nested dict) on top."""
    if os.path.exists(preset_or_path):
        with open(preset_or_path) as f:
            data, where = yaml.safe_load(f) or {}, preset_or_path
    else:
        data, where = yaml.safe_load(_preset_text("build", preset_or_path)) or {}, f"preset {preset_or_path}"
    return build_config_from_dict(merge(data, overrides or {}), where)


def load_schedule(preset_or_path: str) -> schedule_schema.MaskSchedule:
    """A schedule preset name (see `smartbrush shard --help`) or a YAML file path."""
    if os.path.exists(preset_or_path):
        with open(preset_or_path) as f:
            return schedule_schema.from_dict(yaml.safe_load(f), preset_or_path)
    return schedule_schema.from_dict(yaml.safe_load(_preset_text("schedules", preset_or_path)), preset_or_path)


def to_yaml(cfg: BuildConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=True)
