"""`smartbrush eval`: every method on every benchmark sample at every precision level, then the metrics.

Per (method, level): FID over whole images and local FID over the box crop (against the benchmark's
real images and crops, whose statistics are computed once), CLIP score between the prompt and the
output's box crop, background preservation (MSE and PSNR outside the given mask, and inside the given
mask but outside the object's exact mask), and for SmartBrush the predicted mask's IoU with the exact
mask beside the given mask's own IoU with it (what the head must beat) and the predicted mask's share of
the given mask. Every method's output goes through the same post-processing (`composite`, recorded in
metrics.json). Generated images are not held: their features and per-sample measures are taken as they
come.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from smartbrush import __version__
from smartbrush.eval import contamination, loading, report
from smartbrush.eval.benchmark import BenchmarkSample, benchmark_info, read_benchmark
from smartbrush.eval.config import EvalConfig, resolved_methods
from smartbrush.eval.extractors import ClipScorer, FidExtractor, load_clip_scorer, load_fid_extractor, sha256_weights
from smartbrush.eval.frechet import FeatureStats, fid_from_stats
from smartbrush.eval.report import METRIC_ORDER
from smartbrush.eval.measures import box_crop, iou, paste, psnr, region_mse, resize_square, to_nchw_uint8

log = logging.getLogger("smartbrush.eval")

METRICS_SCHEMA = "smartbrush.eval_metrics"
METRICS_VERSION = 2
COMPOSITE_NOTES = {
    "given": "every method's decoded image pasted into the input through the given mask (hard edge)",
    "none": "every method's decoded image as it is (no pixel-space composite)",
    "native": "each method as it ships: SmartBrush composited through its predicted mask (feathered), "
              "the baselines' decoded images as they are",
}
SMARTBRUSH_METHODS = ("smartbrush", "smartbrush-noswitch")
MASK_METRICS = ("mask_iou", "mask_iou_given", "pred_mask_area")


class OverlapError(RuntimeError):
    pass


@dataclass
class GroupAccumulator:
    """Running measures of one (method, level)."""

    fid: FeatureStats = field(default_factory=FeatureStats)
    local_fid: FeatureStats = field(default_factory=FeatureStats)
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    n: int = 0

    def add(self, name: str, value: float | None) -> None:
        if value is not None:
            self.per_sample.setdefault(name, []).append(float(value))


def level_precisions(cfg: EvalConfig, bench: dict, samples: list[BenchmarkSample], num_levels: int,
                     training_schedule: dict | None) -> tuple[list[int], dict[int, int]]:
    """The benchmark levels to evaluate and the checkpoint precision each maps to.

    With the training schedule's hash: identity. Otherwise an `exact` level is s = 0 and a `box` level is
    s = S (the paper's two settings); a blurred level needs `precisions` or the training schedule."""
    schedule = bench.get("mask_schedule") or samples[0].meta.get("mask_schedule") or {}
    bench_levels = schedule.get("levels") or [{"type": "?"}] * len(samples[0].masks)
    levels = list(cfg.levels) or list(range(len(bench_levels)))
    for lv in levels:
        if not 0 <= lv < len(bench_levels):
            raise ValueError(f"level {lv}: the benchmark has levels 0..{len(bench_levels) - 1}")
    if cfg.precisions:
        if len(cfg.precisions) != len(levels):
            raise ValueError(f"{len(cfg.precisions)} precisions for {len(levels)} levels {levels}")
        mapping = dict(zip(levels, cfg.precisions))
    elif training_schedule and training_schedule.get("hash") == schedule.get("hash"):
        mapping = {lv: lv for lv in levels}
    else:
        mapping = {}
        for lv in levels:
            kind = bench_levels[lv].get("type")
            if kind == "exact":
                mapping[lv] = 0
            elif kind == "box":
                mapping[lv] = num_levels - 1
            else:
                raise ValueError(f"benchmark level {lv} ({kind}) has no counterpart in the checkpoint's levels without "
                                 "the training schedule: pass --precisions, or build the benchmark with the "
                                 "training schedule or `--schedule exact-box`")
    for lv, s in mapping.items():
        if not 0 <= s < num_levels:
            raise ValueError(f"precision {s} for benchmark level {lv}: the checkpoint knows 0..{num_levels - 1}")
    return levels, mapping


def training_schedule(checkpoint: str) -> dict | None:
    """The mask schedule of the first inpainting shard set in the checkpoint's lineage, when readable."""
    from smartbrush.schemas.manifest import read_manifest

    path = contamination.find_lineage(checkpoint)
    if path is None:
        return None
    for entry in contamination.read_lineage(path)["shard_sets"]:
        if entry.get("kind", "inpainting") == "inpainting":
            try:
                return read_manifest(contamination._resolve(entry["path"], path)).get("mask_schedule")
            except (FileNotFoundError, OSError, ValueError):
                return None
    return None


class Runner:
    """One method: a batch of samples at one level -> (uint8 images, predicted masks or None)."""

    def __init__(self, name: str, cfg: EvalConfig, checkpoint: str):
        s = cfg.sampler
        self.name, self.cfg = name, cfg
        if name in SMARTBRUSH_METHODS:
            self.pipe = loading.load_smartbrush(checkpoint, s.scheduler, s.device, s.dtype)
            self.weights = sha256_weights(os.path.join(loading.checkpoint_folder(checkpoint), "unet"))
        elif name == "sd-inpaint":
            self.pipe = loading.load_sd_inpaint(cfg.sd_inpaint, s.scheduler, s.device, s.dtype)
            self.weights = sha256_weights(os.path.join(cfg.sd_inpaint, "unet"))
        elif name == "sd-blend":
            self.pipe = loading.load_sd_blend(cfg.sd_base, s.scheduler, s.device, s.dtype)
            self.weights = sha256_weights(os.path.join(cfg.sd_base, "unet"))
        else:
            raise ValueError(f"unknown method {name!r}")
        self.pipe.set_progress_bar_config(disable=True)
        self.device = self.pipe.device

    def __call__(self, batch: list[BenchmarkSample], level: int, precision: int, seeds: list[int]):
        from PIL import Image

        s = self.cfg.sampler
        images = [Image.fromarray(b.image) for b in batch]
        masks = [Image.fromarray(b.masks[level].astype(np.uint8) * 255) for b in batch]
        prompts = [b.prompt(self.cfg.prompt) for b in batch]
        gens = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        h, w = batch[0].image.shape[:2]
        common = dict(prompt=prompts, image=images, mask_image=masks, height=h, width=w,
                      num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                      negative_prompt=[s.negative_prompt] * len(batch) if s.negative_prompt else None,
                      generator=gens, output_type="np")
        if self.name in SMARTBRUSH_METHODS:
            out = self.pipe(**common, precision=[precision] * len(batch),
                            switch_at=s.switch_at if self.name == "smartbrush" else None,
                            mask_threshold=s.mask_threshold, mask_dilation=s.mask_dilation, feather=s.feather,
                            composite=self.cfg.composite == "native")
            pred = [np.asarray(m) > 0.5 for m in out.masks]
        else:
            out = self.pipe(**common)
            pred = None
        outs = [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in out.images]
        return postprocess(outs, batch, level, self.cfg.composite), pred


def postprocess(outs: list[np.ndarray], batch: list[BenchmarkSample], level: int, composite: str) -> list[np.ndarray]:
    """The scored images: with composite "given", every output pasted into its input through the given mask."""
    if composite != "given":
        return outs
    return [paste(o, b.image, b.masks[level]) for o, b in zip(outs, batch)]


def _features(extractor: FidExtractor | None, images: list[np.ndarray], size: int = 0) -> torch.Tensor | None:
    if extractor is None:
        return None
    return extractor.features(to_nchw_uint8([resize_square(im, size) for im in images]))


def run_eval(checkpoint: str, benchmark: str, out: str, cfg: EvalConfig, allow_overlap: bool = False,
             runners: dict | None = None) -> dict:
    """Run the evaluation and write metrics.json / .csv / .md, grid PNGs and config.yaml into `out`."""
    os.makedirs(out, exist_ok=True)
    methods = resolved_methods(cfg)
    bench = benchmark_info(benchmark)
    samples = read_benchmark(benchmark, cfg.limit)
    if not samples:
        raise ValueError(f"{benchmark}: no samples")
    log.info("benchmark %s: %d samples", benchmark, len(samples))

    # Contamination first: nothing is generated for a benchmark the model has seen.
    if allow_overlap and contamination.find_lineage(checkpoint) is None:
        contam = contamination.ContaminationReport(False, None, note="no lineage.json; not checked (--allow-overlap)")
    else:
        try:
            contam = contamination.check(checkpoint, samples)
        except contamination.ContaminationError as e:
            if not allow_overlap:
                raise OverlapError(str(e)) from e
            contam = contamination.ContaminationReport(False, contamination.find_lineage(checkpoint),
                                                       note=f"not checked (--allow-overlap): {e}")
        if not contam.checked and not allow_overlap:
            raise OverlapError(f"contamination check impossible: {contam.note}. Pass --allow-overlap to evaluate anyway")
        if contam.benchmark_samples_overlapping and not allow_overlap:
            first = contam.overlaps[0]
            raise OverlapError(
                f"{contam.benchmark_samples_overlapping} of {len(samples)} benchmark samples share a source image with "
                f"the training data (e.g. {first['benchmark_key']} ~ {first['training_key']} in {first['shard_set']}, "
                f"by {first['by']}). Use a benchmark from other images, or --allow-overlap to score it anyway "
                "(the overlap is then reported in metrics.json)")

    runners = dict(runners or {})
    for name in methods:
        if name not in runners:
            runners[name] = Runner(name, cfg, checkpoint)
    first_smartbrush = next((runners[m] for m in methods if m in SMARTBRUSH_METHODS), None)
    num_levels = first_smartbrush.pipe.num_levels if first_smartbrush else len(samples[0].masks)
    levels, precisions = level_precisions(cfg, bench, samples, num_levels, training_schedule(checkpoint))

    m = cfg.metrics
    device = str(loading.resolve_device(cfg.sampler.device))
    fid = load_fid_extractor(m.fid_weights, m.fid_torchscript, m.fid_antialias, device)
    clip: ClipScorer | None = load_clip_scorer(m.clip)
    if clip is not None:
        clip.metric.to(device)

    # Real statistics, once.
    real_fid, real_local = FeatureStats(), FeatureStats()
    if fid is not None:
        for i in tqdm(range(0, len(samples), cfg.batch_size), desc="real features", unit="batch"):
            batch = samples[i:i + cfg.batch_size]
            real_fid.update(_features(fid, [b.image for b in batch], m.fid_size))
            real_local.update(_features(fid, [box_crop(b.image, b.box, m.local_size) for b in batch]))

    groups: dict[tuple[str, int], GroupAccumulator] = {}
    grid: dict[int, dict[str, list]] = {lv: {} for lv in levels}
    total = len(methods) * len(levels) * len(samples)
    with tqdm(total=total, desc="sampling", unit="image") as bar:
        for name in methods:
            runner = runners[name]
            for lv in levels:
                acc = groups.setdefault((name, lv), GroupAccumulator())
                for i in range(0, len(samples), cfg.batch_size):
                    batch = samples[i:i + cfg.batch_size]
                    seeds = [cfg.sampler.seed * 1_000_003 + i + j for j in range(len(batch))]
                    outs, preds = runner(batch, lv, precisions[lv], seeds)
                    _measure(acc, batch, outs, preds, lv, fid, clip, cfg)
                    if len(grid[lv].setdefault(name, [])) < cfg.grid_samples:
                        grid[lv][name].extend(list(zip(outs, preds or [None] * len(outs)))[: cfg.grid_samples - len(grid[lv][name])])
                    if cfg.save_images:
                        report.save_images(out, name, lv, batch, outs, preds)
                    bar.update(len(batch))
                if clip is not None:
                    acc.add("clip_score_group", clip.compute_and_reset())

    rows = _rows(groups, precisions, real_fid, real_local, fid, clip, runners, cfg)
    result = {
        "schema": METRICS_SCHEMA,
        "schema_version": METRICS_VERSION,
        "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": os.path.abspath(checkpoint),
                       "unet_sha256": first_smartbrush.weights if first_smartbrush else None},
        "benchmark": {**bench, "samples_evaluated": len(samples)},
        "methods": {name: {"weights_sha256": runners[name].weights if hasattr(runners[name], "weights") else None}
                    for name in methods},
        "levels": [{"benchmark_level": lv, "precision": precisions[lv],
                    "type": _level_type(bench, samples, lv)} for lv in levels],
        "postprocess": {"composite": cfg.composite, "description": COMPOSITE_NOTES[cfg.composite]},
        "comparable": comparable_key(bench, samples, fid, clip, cfg),
        "feature_extractors": {"fid": fid.provenance() if fid else None, "clip": clip.provenance() if clip else None},
        "contamination": {**contam.to_json(), "allowed": bool(allow_overlap)},
        "not_computed": _not_computed(fid, clip),
        "config": cfg.to_dict(),
        "metrics": rows,
    }
    report.write_all(out, result, grid, samples, levels, cfg)
    return result


def _measure(acc: GroupAccumulator, batch, outs, preds, lv, fid, clip, cfg: EvalConfig) -> None:
    m = cfg.metrics
    crops = [box_crop(o, b.box, m.local_size) for o, b in zip(outs, batch)]
    if fid is not None:
        acc.fid.update(_features(fid, outs, m.fid_size))
        acc.local_fid.update(_features(fid, crops))
    if clip is not None:
        clip.update(to_nchw_uint8(crops), [b.prompt(cfg.prompt) for b in batch])
    for k, (o, b) in enumerate(zip(outs, batch)):
        given, exact = b.masks[lv], b.masks[0]
        outside = region_mse(o, b.image, ~given)
        between = region_mse(o, b.image, given & ~exact)
        acc.add("bg_mse_outside", outside)
        acc.add("bg_psnr_outside", None if outside is None else psnr(outside, m.psnr_cap_db))
        acc.add("bg_mse_mask_not_object", between)
        acc.add("bg_psnr_mask_not_object", None if between is None else psnr(between, m.psnr_cap_db))
        if preds is not None:
            acc.add("mask_iou", iou(preds[k], exact))
            acc.add("mask_iou_given", iou(given, exact))
            acc.add("pred_mask_area", float(preds[k].sum()) / max(int(given.sum()), 1))
    acc.n += len(batch)


def _level_type(bench: dict, samples: list[BenchmarkSample], level: int) -> str:
    schedule = bench.get("mask_schedule") or samples[0].meta.get("mask_schedule") or {}
    levels = schedule.get("levels") or []
    return str(levels[level].get("type", "?")) if level < len(levels) else "?"


def comparable_key(bench: dict, samples: list[BenchmarkSample], fid, clip, cfg: EvalConfig) -> dict:
    """What must agree for two metrics.json to share a table (`smartbrush eval compare` checks it)."""
    m = cfg.metrics
    return {
        "benchmark_manifest_sha256": bench["manifest_sha256"],
        "samples_evaluated": len(samples),
        "resolution": int(samples[0].image.shape[0]),
        "fid_size": m.fid_size or int(samples[0].image.shape[0]),
        "local_size": m.local_size,
        "fid_extractor_sha256": fid.sha256 if fid else None,
        "fid_feature_size": fid.feature_size if fid else None,
        "fid_antialias": fid.antialias if fid else None,
        "clip_sha256": clip.sha256 if clip else None,
        "prompt": cfg.prompt,
        "composite": cfg.composite,
    }


def _not_computed(fid, clip) -> list[str]:
    out = []
    if fid is None:
        out.append("fid, local_fid: no FID feature extractor (--fid-weights or --fid-torchscript)")
    if clip is None:
        out.append("clip_score: no CLIP folder (--clip)")
    out.append("lpips: torchmetrics' LPIPS builds its backbone through torchvision, which must stay out of this environment")
    return out


def _rows(groups, precisions, real_fid, real_local, fid, clip, runners, cfg) -> list[dict]:
    rows = []
    fid_sha = fid.sha256 if fid else None
    for (name, lv), acc in groups.items():
        base = {"method": name, "level": lv, "precision": precisions[lv]}

        def row(metric, value, n, sha=None):
            rows.append({**base, "metric": metric, "value": value, "samples": n, "feature_sha256": sha})

        if fid is not None:
            enough = acc.fid.n >= 2 and real_fid.n >= 2
            row("fid", fid_from_stats(real_fid, acc.fid) if enough else None, acc.fid.n, fid_sha)
            row("local_fid", fid_from_stats(real_local, acc.local_fid) if enough else None, acc.local_fid.n, fid_sha)
        if clip is not None:
            row("clip_score", acc.per_sample["clip_score_group"][0], acc.n, clip.sha256)
        for metric in METRIC_ORDER[3:]:
            values = acc.per_sample.get(metric, [])
            if metric in MASK_METRICS and name not in SMARTBRUSH_METHODS:
                continue
            row(metric, float(np.mean(values)) if values else None, len(values))
    return rows


def config_dict(cfg: EvalConfig) -> dict:
    return dataclasses.asdict(cfg)
