"""The `sample`, `eval` (and `eval compare`) and `bench` verbs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from smartbrush.eval.config import (COMPOSITES, METHODS, SCHEDULERS, SamplerConfig, load_eval_config, load_sampler_config,
                                    protocols, to_yaml)
from smartbrush.flags import parse_job_args

log = logging.getLogger("smartbrush.eval")


def _sampler_flags(p: argparse.ArgumentParser) -> None:
    d = SamplerConfig()
    g = p.add_argument_group("sampler (override --config)")
    g.add_argument("--steps", type=int, help=f"denoising steps (default {d.steps})")
    g.add_argument("--guidance-scale", type=float, help=f"classifier-free guidance scale (default {d.guidance_scale})")
    g.add_argument("--negative-prompt", help="negative prompt (default empty)")
    g.add_argument("--scheduler", choices=SCHEDULERS, help=f"sampler, from the checkpoint's scheduler config (default {d.scheduler})")
    g.add_argument("--switch-at", type=float, help="fraction of the steps after which the predicted mask replaces the "
                                                   f"given one for blending (default {d.switch_at})")
    g.add_argument("--mask-threshold", type=float, help=f"predicted mask = sigmoid(logit) > T (default {d.mask_threshold})")
    g.add_argument("--mask-dilation", type=int, help=f"dilate the predicted mask by N pixels (default {d.mask_dilation})")
    g.add_argument("--feather", type=float, help=f"sigma in pixels of the composite's soft edge (default {d.feather})")
    g.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype (default float32)")


def _sampler_overrides(a: argparse.Namespace) -> dict:
    keys = ("steps", "guidance_scale", "negative_prompt", "scheduler", "switch_at", "mask_threshold", "mask_dilation",
            "feather", "seed", "device", "dtype")
    return {k: getattr(a, k) for k in keys if getattr(a, k) is not None}


def sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smartbrush sample", allow_abbrev=False,
        description="Inpaint one image with a SmartBrush checkpoint at a mask precision level; writes the image and "
                    "the predicted object mask (OUT_mask.png) and the resolved settings (OUT.yaml).")
    p.add_argument("--checkpoint", required=True, help="a training run's folder (its final/) or a saved SmartBrushPipeline")
    p.add_argument("--image", required=True, help="input image")
    p.add_argument("--mask", required=True, help="mask image: white (> 127) = inpaint")
    p.add_argument("--precision", required=True, type=int,
                   help="mask precision level s: 0 = the mask is the object's exact shape ... S = only its box")
    p.add_argument("--prompt", required=True, help="what to paint inside the mask")
    p.add_argument("--out", required=True, help="output image (PNG or JPEG by extension)")
    p.add_argument("--mask-out", help="predicted mask path (default OUT's stem + _mask.png)")
    p.add_argument("--no-switch", action="store_true", help="blend and composite through the given mask only (ablation)")
    p.add_argument("--size", type=int, help="resize the input to SIZE x SIZE first (default: its own size, "
                                            "rounded down to a multiple of 8)")
    p.add_argument("--config", default="", help="YAML of sampler settings (keys: see docs/evaluation.md)")
    _sampler_flags(p)
    return p


def sample_main(argv: list[str]) -> int:
    a, _ = parse_job_args(sample_parser(), argv, beam=False)
    import numpy as np
    import torch
    from PIL import Image

    from smartbrush.eval.loading import load_smartbrush

    cfg = load_sampler_config(a.config, _sampler_overrides(a))
    pipe = load_smartbrush(a.checkpoint, cfg.scheduler, cfg.device, cfg.dtype)
    if not 0 <= a.precision < pipe.num_levels:
        print(f"smartbrush sample: --precision {a.precision}: this checkpoint knows levels 0..{pipe.num_levels - 1}",
              file=sys.stderr)
        return 2
    image = Image.open(a.image).convert("RGB")
    mask = Image.open(a.mask).convert("L")
    if a.size:
        image, mask = image.resize((a.size, a.size), Image.Resampling.BICUBIC), mask.resize((a.size, a.size))
    if mask.size != image.size:
        print(f"smartbrush sample: mask {mask.size} and image {image.size} differ in size", file=sys.stderr)
        return 2
    w, h = (image.width // 8) * 8, (image.height // 8) * 8
    image, mask = image.crop((0, 0, w, h)), mask.crop((0, 0, w, h))
    out = pipe(prompt=a.prompt, image=image, mask_image=mask, precision=a.precision, height=h, width=w,
               num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
               negative_prompt=cfg.negative_prompt or None,
               generator=torch.Generator(device="cpu").manual_seed(cfg.seed),
               switch_at=None if a.no_switch else cfg.switch_at, mask_threshold=cfg.mask_threshold,
               mask_dilation=cfg.mask_dilation, feather=cfg.feather)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    stem = os.path.splitext(a.out)[0]
    mask_out = a.mask_out or stem + "_mask.png"
    out.images[0].save(a.out)
    out.masks[0].save(mask_out)
    record = {"checkpoint": os.path.abspath(a.checkpoint), "image": os.path.abspath(a.image),
              "mask": os.path.abspath(a.mask), "precision": a.precision, "prompt": a.prompt,
              "switch": not a.no_switch, "size": [w, h], "sampler": dataclasses.asdict(cfg), "outputs": [a.out, mask_out],
              "predicted_mask_pixels": int((np.asarray(out.masks[0]) > 0).sum())}
    with open(stem + ".yaml", "w") as f:
        f.write(to_yaml(record))
    print(f"wrote {a.out} and {mask_out}")
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smartbrush eval", allow_abbrev=False,
        description="FID, local FID, CLIP score, background preservation and predicted-mask IoU of a SmartBrush "
                    "checkpoint and baselines on a benchmark shard set, per method and precision level. Writes "
                    "metrics.json, metrics.csv, metrics.md, grid_s<level>.png and config.yaml to --out. "
                    "`smartbrush eval compare A/metrics.json B/metrics.json ...` puts runs in one table.")
    p.add_argument("--checkpoint", required=True, help="a training run's folder (its final/ and lineage.json)")
    p.add_argument("--benchmark", required=True, help="an inpainting shard set built by `smartbrush build`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--protocol", default="", choices=[""] + protocols(),
                   help="settings of a published protocol (presets/eval/NAME.yaml), under --config and the flags: "
                        + ", ".join(protocols()))
    p.add_argument("--config", default="", help="YAML with the keys of docs/evaluation.md; flags go on top")
    p.add_argument("--methods", help=f"comma-separated, of {', '.join(METHODS)} (default: smartbrush, "
                                     "smartbrush-noswitch and the baselines whose paths are given)")
    p.add_argument("--sd-inpaint", help="9-channel StableDiffusionInpaintPipeline folder (baseline sd-inpaint)")
    p.add_argument("--sd-base", help="text-to-image Stable Diffusion folder (baseline sd-blend, latent blending)")
    p.add_argument("--fid-weights", help="FID Inception weights file (needs torch-fidelity)")
    p.add_argument("--fid-torchscript", help="TorchScript feature extractor for FID: uint8 (N,3,H,W) -> (N,D)")
    p.add_argument("--fid-antialias", action="store_true", default=None,
                   help="antialiased resize into Inception (default off, as earlier papers)")
    p.add_argument("--fid-size", type=int, help="resize every image to N x N before FID (default 0: as generated)")
    p.add_argument("--clip", help="local CLIP folder (CLIPModel and its processor) for the CLIP score")
    p.add_argument("--prompt-from", choices=("label", "caption"), help="prompt = class label or caption (default label)")
    p.add_argument("--levels", help="comma-separated benchmark levels (default all)")
    p.add_argument("--precisions", help="comma-separated checkpoint level per benchmark level (default: exact -> 0, "
                                        "box -> S, or identity when the training schedule is the benchmark's)")
    p.add_argument("--limit", type=int, help="first N benchmark samples")
    p.add_argument("--batch-size", type=int, help="samples per pipeline call (default 1)")
    p.add_argument("--save-images", action="store_true", default=None, help="write every output image and mask")
    p.add_argument("--composite", choices=COMPOSITES,
                   help="post-processing of every method's output: given = pasted into the input through the given "
                        "mask (default), none = the decoded image as it is, native = SmartBrush's own feathered "
                        "composite through its predicted mask and the baselines' raw output")
    p.add_argument("--allow-overlap", action="store_true",
                   help="score a benchmark that shares source images with the training data; the overlap is reported")
    p.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json in --out")
    _sampler_flags(p)
    return p


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",") if v.strip()]


def eval_main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        return compare_main(argv[1:])
    a, _ = parse_job_args(eval_parser(), argv, beam=False)
    from smartbrush.eval.harness import OverlapError, run_eval

    over: dict = {"sampler": _sampler_overrides(a), "metrics": {}}
    for flag, key in (("fid_weights", "fid_weights"), ("fid_torchscript", "fid_torchscript"),
                      ("fid_antialias", "fid_antialias"), ("fid_size", "fid_size"), ("clip", "clip")):
        if getattr(a, flag) is not None:
            over["metrics"][key] = getattr(a, flag)
    for flag, key in (("sd_inpaint", "sd_inpaint"), ("sd_base", "sd_base"), ("prompt_from", "prompt"),
                      ("limit", "limit"), ("batch_size", "batch_size"), ("save_images", "save_images"),
                      ("composite", "composite")):
        if getattr(a, flag) is not None:
            over[key] = getattr(a, flag)
    if a.methods is not None:
        over["methods"] = [m.strip() for m in a.methods.split(",") if m.strip()]
    for flag in ("levels", "precisions"):
        if getattr(a, flag) is not None:
            over[flag] = _ints(getattr(a, flag))
    cfg = load_eval_config(a.config, over, protocol=a.protocol)
    if os.path.exists(os.path.join(a.out, "metrics.json")) and not a.overwrite:
        print(f"smartbrush eval: {a.out} already holds metrics.json; pass --overwrite or another --out", file=sys.stderr)
        return 2
    try:
        result = run_eval(a.checkpoint, a.benchmark, a.out, cfg, allow_overlap=a.allow_overlap)
    except OverlapError as e:
        print(f"smartbrush eval: {e}", file=sys.stderr)
        return 3
    c = result["contamination"]
    if c["benchmark_samples_overlapping"]:
        log.warning("%d benchmark samples overlap the training data (reported in metrics.json)",
                    c["benchmark_samples_overlapping"])
    with open(os.path.join(a.out, "metrics.md")) as f:
        print(f.read())
    print(f"wrote {os.path.join(a.out, 'metrics.json')} ({len(result['metrics'])} numbers)")
    return 0


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smartbrush eval compare", allow_abbrev=False,
        description="One table (markdown and CSV) of several evaluation runs: methods x metrics per benchmark level. "
                    "Refuses runs scored on different benchmarks, extractors, resolutions, prompts or "
                    "post-processing, naming the difference.")
    p.add_argument("runs", nargs="+", help="metrics.json files (or the folders holding them)")
    p.add_argument("--out", help="folder for compare.md and compare.csv (default: print only)")
    return p


def compare_main(argv: list[str]) -> int:
    a, _ = parse_job_args(compare_parser(), argv, beam=False)
    from smartbrush.eval.compare import CompareError, comparison, markdown, write

    try:
        comp = comparison(a.runs)
    except CompareError as e:
        print(f"smartbrush eval compare: {e}", file=sys.stderr)
        return 2
    print(markdown(comp))
    if a.out:
        md, cs = write(comp, a.out)
        print(f"wrote {md} and {cs}")
    return 0


def bench_parser() -> argparse.ArgumentParser:
    from smartbrush.eval.importers import FORMATS

    p = argparse.ArgumentParser(
        prog="smartbrush bench import", allow_abbrev=False,
        description="`smartbrush bench import --format F [SRC] --out DIR`: a published benchmark, read as it is "
                    "published, written as an inpainting shard set (exact-box schedule: level 0 = the free-form "
                    "mask, level 1 = its box) that `smartbrush eval --benchmark DIR` and `smartbrush verify DIR` "
                    "take. Source files' sha256 go into manifest.json's inputs.")
    p.add_argument("src", nargs="?", default="",
                   help="brushbench/editbench: mapping_file.json or its folder; hd-painter: the image_idx,segment_idx "
                        "CSV (mscoco_testset_10000.csv); coco-pairs: an image_id,annotation_id CSV; coco-paper: none; "
                        "openimages-paper: a shard set built from OpenImages test (`smartbrush build "
                        "--openimages-... --schedule exact-box`), folder or URL")
    p.add_argument("--format", required=True, choices=FORMATS, help="the benchmark's published format")
    p.add_argument("--out", required=True, help="new folder for the shard set")
    p.add_argument("--coco", help="COCO folder (annotations/instances_SPLIT.json and SPLIT/) for the COCO formats")
    p.add_argument("--split", default="val2017", help="COCO split (default val2017)")
    p.add_argument("--resolution", type=int, default=512, help="benchmark resolution R (default 512)")
    p.add_argument("--mask-key", default="inpainting_mask", choices=("inpainting_mask", "outpainting_mask"),
                   help="brushbench/editbench mask (default inpainting_mask)")
    p.add_argument("--per-image", type=int, default=2, help="coco-paper: masks per image (default 2)")
    p.add_argument("--seed", type=int, default=0, help="coco-paper, openimages-paper: seed of the draw (default 0)")
    p.add_argument("--min-area", type=float, default=0.01,
                   help="coco-paper: smallest object, as a fraction of the image (default 0.01)")
    p.add_argument("--min-image-side", type=int, default=512,
                   help="openimages-paper: smallest side of a kept source image in px (default 512)")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="default 1000")
    p.add_argument("--jpeg-quality", type=int, default=95, help="default 95")
    return p


def bench_main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        bench_parser().parse_args(["--help"])  # the help of `bench import`, the one sub-verb; exits 0
    if not argv or argv[0] != "import":
        print("usage: smartbrush bench import --format F [SRC] --out DIR  (smartbrush bench import --help for flags)",
              file=sys.stderr)
        return 2
    p = bench_parser()
    a, _ = parse_job_args(p, argv[1:], beam=False)
    from smartbrush.eval import importers
    from smartbrush.eval.bench_writer import write_benchmark

    coco_formats = ("hd-painter", "coco-pairs", "coco-paper")
    if a.format in coco_formats and not a.coco:
        p.error(f"--format {a.format} needs --coco (the folder of the COCO images and annotations)")
    if a.format == "coco-paper" and a.src:
        p.error("--format coco-paper draws its own list from --coco; give no SRC")
    if a.format != "coco-paper" and not a.src:
        p.error(f"--format {a.format} needs SRC")
    if a.resolution < 16 or a.samples_per_shard < 1 or not 1 <= a.jpeg_quality <= 100 or a.per_image < 1:
        p.error("--resolution >= 16, --samples-per-shard >= 1, --per-image >= 1 and --jpeg-quality 1..100 required")
    if a.src and "://" not in a.src and not os.path.exists(a.src):
        p.error(f"SRC {a.src}: no such file or folder")
    try:
        if a.format in ("brushbench", "editbench"):
            got = importers.read_brushbench(a.src, a.resolution, a.mask_key, source=a.format)
        elif a.format == "hd-painter":
            got = importers.read_hd_painter(a.src, a.coco, a.split, a.resolution)
        elif a.format == "coco-pairs":
            got = importers.read_coco_pairs(a.src, a.coco, a.split, a.resolution)
        elif a.format == "coco-paper":
            got = importers.read_coco_paper(a.coco, a.split, a.resolution, a.per_image, a.seed, a.min_area)
        if a.format == "openimages-paper":
            from smartbrush.eval import paper_openimages

            manifest = paper_openimages.import_set(a.src, a.out, a.min_image_side, a.seed, a.samples_per_shard)
        else:
            manifest = write_benchmark(a.out, got.samples, got.rejected, got.inputs, got.config,
                                       a.samples_per_shard, a.jpeg_quality)
    except (OSError, ValueError, KeyError) as e:
        print(f"smartbrush bench: {e}", file=sys.stderr)
        return 2
    c = manifest["counts"]
    print(f"wrote {a.out}: {c['written']} samples in {len(manifest['shards'])} shards; {c['inputs']} listed, "
          f"rejected {c['rejected'] or 0}")
    return 0
