"""What every job verb shares: Beam options, config flags, captioner flags, the output folder."""

from __future__ import annotations

import argparse
import os

import yaml
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from smartbrush import config as config_mod
from smartbrush.pipeline.caption.blip import (BlipCaptioner, CaptionerConfigError, GenerationSettings,
                                              RuntimeSettings)
from smartbrush.pipeline.caption.captioners import Captioner, LabelCaptioner
from smartbrush.pipeline.caption.crops import CropPolicy
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.storage.identity import claim_output, make_identity
from smartbrush.schemas import manifest as manifest_schema

BEAM_FLAGS_HELP = ("Flags this job does not know are Beam pipeline options and pass through unchanged, e.g. "
                   "--runner DataflowRunner --project P --region R --temp_location gs://B/tmp "
                   "--setup_file ./setup.py, or --direct_num_workers 2 --direct_running_mode multi_processing "
                   "for the local runner (the default).")


def pipeline_options(beam_args: list[str]) -> tuple[PipelineOptions, object]:
    """Beam options plus the runner to use. The local default is Beam's FnApiRunner, which is what
    the DirectRunner runs batch pipelines on, without first trying to download the Prism binary."""
    options = PipelineOptions(beam_args)
    runner_name = options.view_as(StandardOptions).runner
    if runner_name in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(DirectOptions)
        if direct.direct_num_workers == 0:
            direct.direct_num_workers = os.cpu_count() or 1
        if direct.direct_num_workers > 1 and direct.direct_running_mode == "in_memory":
            direct.direct_running_mode = "multi_processing"
        return options, FnApiRunner()
    return options, runner_name


def add_config_flags(parser: argparse.ArgumentParser, shard_flags: bool = True) -> None:
    g = parser.add_argument_group("configuration (flags override --config)")
    g.add_argument("--config", default="default",
                   help=f"build config preset ({', '.join(config_mod.list_presets('build'))}) or YAML file")
    if shard_flags:
        g.add_argument("--schedule", help="mask schedule preset "
                       f"({', '.join(config_mod.list_presets('schedules'))}) or YAML file")
        g.add_argument("--resolution", type=int, help="training crop and mask size R (R x R)")
        g.add_argument("--crop-policy", choices=["scene", "object"], help="scene (default): the largest square of "
                       "the image holding the object; object: context x the object's box (docs/crop-policy.md)")
        g.add_argument("--samples-per-shard", type=int)
        g.add_argument("--chunks", type=int, help="run as N pipelines over disjoint sets of source images, so "
                       "that the local runner holds 1/N of the rows (README: building at real size)")
        g.add_argument("--jpeg-quality", type=int)
    g.add_argument("--min-area", type=int, help="filter instances with fewer mask pixels")
    g.add_argument("--min-box-side", type=int, help="filter instances whose box is thinner")
    g.add_argument("--max-instances-per-image", type=int, help="keep the N largest per image (0: all)")
    g.add_argument("--include-crowd", action="store_true", default=None, help="keep COCO crowd annotations")


def resolve_config(args: argparse.Namespace) -> config_mod.BuildConfig:
    o: dict = {}

    def put(section, key, value):
        if value is not None:
            (o.setdefault(section, {}) if section else o)[key] = value

    put(None, "schedule", getattr(args, "schedule", None))
    put(None, "captioner", getattr(args, "captioner", None))
    put("render", "resolution", getattr(args, "resolution", None))
    put("render", "crop_policy", getattr(args, "crop_policy", None))
    put("render", "jpeg_quality", getattr(args, "jpeg_quality", None))
    put("shards", "samples_per_shard", getattr(args, "samples_per_shard", None))
    put("shards", "chunks", getattr(args, "chunks", None))
    put("filters", "min_area", getattr(args, "min_area", None))
    put("filters", "min_box_side", getattr(args, "min_box_side", None))
    put("filters", "max_instances_per_image", getattr(args, "max_instances_per_image", None))
    put("filters", "include_crowd", getattr(args, "include_crowd", None))
    return config_mod.load_build_config(args.config, o)


def add_captioner_flags(parser: argparse.ArgumentParser, default: str | None = "label") -> None:
    """The captioner flags; `smartbrush build` passes default=None so that its config decides."""
    g = parser.add_argument_group("captioner")
    g.add_argument("--captioner", default=default, choices=["label", "blip"],
                   help="label: the class name; blip: a BLIP/BLIP-2 caption of each object's crop "
                        f"(default: {default or 'from the config'})")
    g.add_argument("--model", help="BLIP checkpoint: a local directory, or a hub id (downloads it; needs "
                                   "HF_HUB_OFFLINE=0)")
    g.add_argument("--revision", help="hub revision (branch, tag or commit) for a hub id")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: bfloat16 on cuda, float32 on cpu")
    g.add_argument("--num-beams", type=int, default=1, help="1: greedy search; more: beam search")
    g.add_argument("--max-new-tokens", type=int, default=20)
    g.add_argument("--prompt", default="", help='text the caption starts with, e.g. "a picture of"; stripped')
    g.add_argument("--min-batch-size", type=int, default=32, help="RunInference batch bounds")
    g.add_argument("--max-batch-size", type=int, default=32)
    g.add_argument("--share-model", action="store_true",
                   help="one model per machine shared by all worker processes (large checkpoints)")
    g.add_argument("--cpu-threads", type=int, default=RuntimeSettings.cpu_threads,
                   help="torch threads per worker process on CPU (0: torch's default, all cores)")
    g.add_argument("--crop-margin", type=float, default=CropPolicy.margin,
                   help="added on each side of the box, as a fraction of its longer side")
    g.add_argument("--crop-min-side", type=int, default=CropPolicy.min_side, help="minimum crop side, source pixels")
    g.add_argument("--grey-background", action="store_true", help="grey out pixels outside the object's mask")


def captioner_from_args(args: argparse.Namespace) -> Captioner:
    """The captioner the flags describe; SystemExit with the reason when the model cannot work."""
    if args.captioner in (None, "label"):
        return LabelCaptioner()
    if not args.model:
        raise SystemExit("--captioner blip needs --model PATH_OR_ID")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device == "cuda" else "float32")
    try:
        return BlipCaptioner.from_pretrained(
            args.model, revision=args.revision,
            generation=GenerationSettings(args.num_beams, args.max_new_tokens, args.prompt, dtype),
            runtime=RuntimeSettings(args.device, args.min_batch_size, args.max_batch_size, args.share_model,
                                    args.cpu_threads),
            crop=CropPolicy(args.crop_margin, args.crop_min_side, args.grey_background))
    except CaptionerConfigError as e:
        raise SystemExit(f"smartbrush: {e}") from None


def describe_captioner(captioner: Captioner) -> dict:
    if isinstance(captioner, BlipCaptioner):
        return captioner.describe()
    return {"captioner": captioner.name, "model": captioner.name, "revision": "", "settings": {}}


def prepare_output(out_dir: str, cfg: config_mod.BuildConfig | dict, identity: dict | None = None,
                   identity_path: str | None = None) -> None:
    """Claim the output folder with the run's identity (refusing a folder whose bytes would differ,
    naming what differs; `identity_path`: see claim_output), write the resolved config beside it
    (a BuildConfig, or a job's own config dict) and drop an interrupted run's temporary files."""
    if isinstance(cfg, dict):
        identity, text = identity, yaml.safe_dump(cfg, sort_keys=True)
    else:
        identity = identity or make_identity(manifest_schema.KIND_INPAINTING, cfg.to_dict())
        text = config_mod.to_yaml(cfg)
    claim_output(out_dir, identity, identity_path)
    fileio.atomic_write_bytes(fileio.join(out_dir, manifest_schema.CONFIG_FILE_NAME), text.encode())
    if "://" not in out_dir:
        for folder, _, names in os.walk(out_dir):
            for name in names:
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(folder, name))
