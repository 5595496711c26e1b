"""`smartbrush demo --out DIR`: the whole corpus build on the embedded sample data (COCO and
OpenImages), then stats and a preview contact sheet. Needs only the installed package."""

from __future__ import annotations

import argparse
import os
from importlib import resources

from smartbrush.pipeline.commands.build import run_build
from smartbrush.flags import parse_job_args
from smartbrush.pipeline.sources.openimages import segmentation_rows_from_masks, write_segmentation_csv
from smartbrush.pipeline.commands.preview import contact_sheet
from smartbrush.schemas.shard_sample import decode_mask_png
from smartbrush.pipeline.commands.stats import format_stats, shard_set_stats
from smartbrush.pipeline.commands.verify import verify_shard_set


def sample_data_dir() -> str:
    return str(resources.files("smartbrush").joinpath("sample_data"))


def sample_build_args(out: str, work: str) -> list[str]:
    """Build flags for the embedded sample data; writes the OpenImages CSV fixture into `work`."""
    data = sample_data_dir()
    masks = os.path.join(data, "openimages", "masks")
    rows = segmentation_rows_from_masks(sorted(os.listdir(masks)),
                                        lambda n: decode_mask_png(open(os.path.join(masks, n), "rb").read()))
    os.makedirs(work, exist_ok=True)
    csv_path = os.path.join(work, "sample-annotations-object-segmentation.csv")
    write_segmentation_csv(rows, csv_path)
    return ["--coco-annotations", os.path.join(data, "instances_sample.json"),
            "--coco-images", os.path.join(data, "coco"), "--coco-split", "val2017",
            "--openimages-segmentations", csv_path, "--openimages-masks", masks,
            "--openimages-images", os.path.join(data, "openimages", "images"),
            "--openimages-classes", os.path.join(data, "openimages_classes.csv"),
            "--out", out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartbrush demo",
        description="Build SmartBrush shards from the embedded sample data (4 COCO and 3 OpenImages images), "
                    "verify them, print stats and write preview.png. No downloads, no weights.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default="small", help="build config preset or YAML (default: small)")
    parser.add_argument("--schedule", help="mask schedule preset or YAML")
    args, beam_args = parse_job_args(parser, argv)
    extra = ["--config", args.config] + (["--schedule", args.schedule] if args.schedule else [])
    print(f"building shards from the embedded sample data into {args.out} ...", flush=True)
    run_build(sample_build_args(args.out, os.path.join(args.out, "inputs")) + extra + beam_args)
    problems = verify_shard_set(args.out)
    for p in problems:
        print(f"MISMATCH {p}")
    print(format_stats(shard_set_stats(args.out)))
    preview = os.path.join(args.out, "preview.png")
    contact_sheet(args.out, n=12).save(preview)
    print(f"preview: {preview}\nverify: {'OK' if not problems else 'FAILED'}")
    return 0 if not problems else 1
