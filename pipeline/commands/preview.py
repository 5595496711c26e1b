"""`smartbrush preview DIR --out PNG`: a contact sheet, one row per sample: the crop, then every mask
level overlaid on it, with the label and first caption."""

from __future__ import annotations

import argparse
import textwrap

import numpy as np
from PIL import Image, ImageDraw

from smartbrush.schemas.shard_sample import (TASK_INPAINTING, decode_jpeg, parse_json, sample_masks, sample_num_levels,
                                             sample_task)
from smartbrush.schemas.shard_set import iter_samples

CELL = 160
HEADER = 28
_TINT = np.array([255, 64, 32], np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * _TINT
    return out.astype(np.uint8)


def sample_row(sample: dict, max_levels: int) -> Image.Image:
    meta = parse_json(sample.get("json"))
    image = decode_jpeg(sample["jpg"])
    masks = sample_masks(sample) if _is_inpainting(sample) else []
    if masks and masks[0].shape != image.shape[:2]:
        raise ValueError(f"{sample['__key__']}: mask and image sizes differ")
    cells = [image] + [overlay(image, m) for m in masks]
    row = Image.new("RGB", (CELL * (max_levels + 1), CELL + HEADER), "white")
    for i, cell in enumerate(cells):
        row.paste(Image.fromarray(cell).resize((CELL, CELL), Image.BILINEAR), (i * CELL, HEADER))
    caption = (meta.get("captions") or [{}])[-1].get("text", "") if meta else sample.get("txt", b"").decode()
    label = meta.get("label", "text-to-image")
    text = f"{label}: {caption}" if caption and caption != label else label
    draw = ImageDraw.Draw(row)
    draw.text((4, 2), textwrap.shorten(text, 90), fill="black")
    draw.text((4, 14), textwrap.shorten(f"{sample['__key__']}  mask levels 0..{len(masks) - 1}", 90), fill="gray")
    return row


def _is_inpainting(sample: dict) -> bool:
    return "json" in sample and sample_task(sample) == TASK_INPAINTING


def contact_sheet(out_dir: str, n: int = 12) -> Image.Image:
    samples = list(iter_samples(out_dir, limit=n))
    if not samples:
        raise ValueError(f"{out_dir}: no samples to preview")
    levels = max(sample_num_levels(s) if _is_inpainting(s) else 0 for s in samples)
    rows = [sample_row(s, levels) for s in samples]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartbrush preview",
                                     description="Contact sheet PNG: each sample's crop with every mask level overlaid.")
    parser.add_argument("dir")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("-n", "--samples", type=int, default=12)
    args = parser.parse_args(argv)
    contact_sheet(args.dir, args.samples).save(args.out)
    print(f"wrote {args.out}")
    return 0
