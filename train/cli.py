"""`smartbrush train`: SmartBrush fine-tuning on a shard mix; works as is and under `accelerate launch`."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from smartbrush.flags import parse_job_args
from smartbrush.train.config import list_presets, load_train_config
from smartbrush.train.data import INPAINTING, TEXT_TO_IMAGE

log = logging.getLogger("smartbrush.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smartbrush train",
        description="Fine-tune Stable Diffusion v1.x into SmartBrush on inpainting shard sets (and optional "
                    "text-to-image sets, mixed 80/20). Writes RUN/final (diffusers folders), checkpoints that "
                    "resume exactly, training_config.yaml, lineage.json, logs/ (losses.jsonl, TensorBoard) and "
                    "loss.png. Re-running with the same --out resumes from the latest checkpoint. Multi-GPU: "
                    "`accelerate launch -m smartbrush.cli train ...`.")
    p.add_argument("--config", default="tiny", help=f"preset ({', '.join(list_presets())}) or YAML file")
    sets = "folders or URLs (https://, gs://, s3://, anything fsspec reads)"
    p.add_argument("--inpainting-shards", nargs="+", required=True, metavar="SET", help=f"inpainting shard sets: {sets}")
    p.add_argument("--t2i-shards", nargs="*", default=[], metavar="SET", help="text-to-image shard sets (LAION)")
    p.add_argument("--validation-shards", nargs="*", default=[], metavar="SET", help="held-out inpainting sets")
    p.add_argument("--validate-every", type=int, default=0, help="steps between validations (0: never)")
    p.add_argument("--validation-batches", type=int, default=4)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--cache-dir", help="where shards of sets given as URLs are fetched to, one folder per node, "
                                       "shared by its ranks (default RUN/shard-cache/HOSTNAME); local sets are "
                                       "read in place")
    p.add_argument("--cache-max-gb", type=float, default=100.0,
                   help="size cap of the shard cache; least-recently-used shards are evicted (default 100)")
    g = p.add_argument_group("overrides of the config")
    g.add_argument("--base", help="model.base: SD v1.x diffusers folder or hub id ('tiny' builds a tiny one)")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--batch-size", type=int, help="data.batch_size (per device and micro-step)")
    g.add_argument("--learning-rate", type=float, help="optim.learning_rate")
    g.add_argument("--resolution", type=int, help="data.resolution")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    g.add_argument("--seed", type=int)
    g.add_argument("--checkpoint-every", type=int)
    return p


def overrides(args) -> dict:
    o: dict = {}
    for section, key, value in (("model", "base", args.base), (None, "max_steps", args.max_steps),
                                ("data", "batch_size", args.batch_size), ("optim", "learning_rate", args.learning_rate),
                                ("data", "resolution", args.resolution), (None, "mixed_precision", args.mixed_precision),
                                (None, "seed", args.seed), (None, "checkpoint_every", args.checkpoint_every)):
        if value is not None:
            (o.setdefault(section, {}) if section else o)[key] = value
    return o


def shard_cache(args):
    """The node's cache for the sets given as URLs (None when every set is local)."""
    from smartbrush.schemas.files import is_url
    from smartbrush.train.shard_cache import GB, ShardCache

    if not any(is_url(s) for s in [*args.inpainting_shards, *args.t2i_shards, *args.validation_shards]):
        return None
    if args.cache_max_gb <= 0:
        raise ValueError(f"--cache-max-gb must be > 0, got {args.cache_max_gb}")
    folder = args.cache_dir or os.path.join(args.out, "shard-cache", socket.gethostname())
    return ShardCache(folder, int(args.cache_max_gb * GB))


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_job_args(build_parser(), argv, beam=False)
    from smartbrush.model.unet import BaseModelError
    from smartbrush.schemas.files import TransientIOError
    from smartbrush.train.loop import TrainingDiverged, train
    from smartbrush.train.shard_cache import ShardCacheError
    from smartbrush.train.stream import ShardSetError, read_shard_set

    try:
        cfg = load_train_config(args.config, overrides(args))
        cache = shard_cache(args)
        inpainting = [read_shard_set(d, INPAINTING, cache) for d in args.inpainting_shards]
        t2i = [read_shard_set(d, TEXT_TO_IMAGE, cache) for d in args.t2i_shards]
        validation = [read_shard_set(d, INPAINTING, cache) for d in args.validation_shards]
    except (ValueError, ShardSetError) as e:
        raise SystemExit(f"smartbrush train: {e}") from None
    try:
        result = train(cfg, inpainting, t2i, args.out, validation, args.validate_every, args.validation_batches)
    except (ShardSetError, ShardCacheError, TransientIOError, TrainingDiverged, BaseModelError) as e:
        raise SystemExit(f"smartbrush train: {e}") from None
    print(f"train: {result['step']} steps, last loss {result['last_loss']:.5f}; model: {result['final']}")
    return 0
