"""Write an evaluation's outputs: metrics.json, metrics.csv, metrics.md (laid out as the paper's tables),
grid_s<level>.png, config.yaml."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from smartbrush.eval.config import to_yaml

CSV_FIELDS = ("method", "level", "precision", "metric", "value", "samples", "feature_sha256")
LOWER_IS_BETTER = {"fid", "local_fid", "bg_mse_outside", "bg_mse_mask_not_object"}
# Rows per (method, level), in the order tables show them: the paper's columns, then background
# preservation, then the mask head's measures with the one that rewards an empty predicted mask beside them.
METRIC_ORDER = ("fid", "local_fid", "clip_score", "bg_mse_outside", "bg_psnr_outside", "mask_iou", "mask_iou_given",
                "pred_mask_area", "bg_mse_mask_not_object", "bg_psnr_mask_not_object")
NEEDS_CONTEXT = ("bg_mse_mask_not_object", "bg_psnr_mask_not_object")
LABELS = {"fid": "FID", "local_fid": "local FID", "clip_score": "CLIP score", "bg_mse_outside": "bg MSE",
          "bg_psnr_outside": "bg PSNR", "mask_iou": "mask IoU", "mask_iou_given": "given-mask IoU",
          "pred_mask_area": "pred. mask area", "bg_mse_mask_not_object": "box-bg MSE",
          "bg_psnr_mask_not_object": "box-bg PSNR"}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_all(out: str, result: dict, grid: dict, samples, levels, cfg) -> None:
    result = dict(result)
    result["metrics"] = [{k: _json_safe(v) for k, v in r.items()} for r in result["metrics"]]
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in result["metrics"]:
            w.writerow({k: r[k] for k in CSV_FIELDS})
    with open(os.path.join(out, "metrics.md"), "w") as f:
        f.write(markdown(result))
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(to_yaml(cfg))
    for lv in levels:
        grid_png(samples, lv, grid[lv]).save(os.path.join(out, f"grid_s{lv}.png"))


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def level_title(level: dict) -> str:
    kind = {"exact": "accurate masks", "box": "box masks"}.get(level.get("type"), f"{level.get('type', '?')} masks")
    return f"{kind}: benchmark level {level['benchmark_level']}, checkpoint precision s = {level['precision']}"


def shown_metrics(present: set[str]) -> list[str]:
    """The columns of a table, in METRIC_ORDER; bg_*_mask_not_object only beside mask IoU and CLIP score
    (alone it rewards an empty predicted mask)."""
    cols = [m for m in METRIC_ORDER if m in present]
    if not {"mask_iou", "clip_score"} <= present:
        cols = [m for m in cols if m not in NEEDS_CONTEXT]
    return cols


def table(rows: list[dict], level: int, metrics: list[str]) -> list[str]:
    """One markdown table: a row per method, a column per metric, then n."""
    lines = ["| method | " + " | ".join(LABELS.get(m, m) for m in metrics) + " | n |",
             "|---" * (len(metrics) + 2) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        got = {r["metric"]: r for r in rows if r["method"] == method and r["level"] == level}
        if not got:
            continue
        n = max((r["samples"] for r in got.values()), default=0)
        lines.append(f"| {method} | " + " | ".join(_fmt(got[m]["value"]) if m in got else "n/a" for m in metrics)
                     + f" | {n} |")
    return lines


def markdown(result: dict) -> str:
    """Laid out as the paper's Tables 1 and 2: one table per level (accurate masks, box masks), a row per
    method; FID, local FID and CLIP score first, then background preservation and the mask head."""
    rows = result["metrics"]
    present = {r["metric"] for r in rows}
    metrics = shown_metrics(present)
    bench = result["benchmark"]
    comp = result.get("comparable", {})
    lines = [f"# Evaluation of {result['checkpoint']['path']}", "",
             f"Benchmark `{bench['path']}` (manifest sha256 `{bench['manifest_sha256'][:12]}`), "
             f"{bench['samples_evaluated']} samples"
             + (f", protocol `{result['config'].get('protocol')}`" if result["config"].get("protocol") else "")
             + f". FID at {comp.get('fid_size', '?')} px, local FID and CLIP score on the box crop at "
             f"{comp.get('local_size', '?')} px. Post-processing: {result['postprocess']['description']}. "
             f"Lower is better for {', '.join(LABELS[m] for m in METRIC_ORDER if m in LOWER_IS_BETTER)}; "
             "pred. mask area is the predicted mask's share of the given mask; higher is better for the rest.", ""]
    for lv in result["levels"]:
        lines += [f"## {level_title(lv)}", ""] + table(rows, lv["benchmark_level"], metrics) + [""]
    hidden = sorted(present & set(NEEDS_CONTEXT) - set(metrics))
    if hidden:
        lines += [f"({', '.join(hidden)} in metrics.json only: shown only beside mask IoU and CLIP score.)", ""]
    fe = result["feature_extractors"]
    lines += ["## Provenance", ""]
    for name, p in fe.items():
        extra = f", {p['feature_size']}-d features" if p and p.get("feature_size") else ""
        lines.append(f"- {name}: " + (f"{p['kind']} `{p['path']}` sha256 `{p['sha256']}`{extra}" if p else "not used"))
    for name, m in result["methods"].items():
        lines.append(f"- {name}: UNet weights sha256 `{m['weights_sha256']}`")
    c = result["contamination"]
    if c["checked"]:
        lines.append(f"- contamination: {c['benchmark_samples_overlapping']} benchmark samples share a source image "
                     f"with {len(c['shard_sets'])} training shard set(s)"
                     + (" (allowed with --allow-overlap)" if c["benchmark_samples_overlapping"] else ""))
    else:
        lines.append(f"- contamination: not checked ({c['note']})")
    for note in result["not_computed"]:
        lines.append(f"- not computed: {note}")
    return "\n".join(lines) + "\n"


def _overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha=0.45) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    return out.astype(np.uint8)


def grid_png(samples, level: int, outputs: dict[str, list], cell: int = 160) -> Image.Image:
    """Rows: samples; columns: the input with the given mask (red), then every method's output (predicted
    masks in green beside SmartBrush outputs)."""
    columns = ["input (given mask)"]
    for name, items in outputs.items():
        columns.append(name)
        if any(p is not None for _, p in items):
            columns.append(f"{name} mask")
    n_rows = min(len(samples), max((len(v) for v in outputs.values()), default=0)) or min(len(samples), 1)
    header = 18
    sheet = Image.new("RGB", (cell * len(columns), header + cell * n_rows), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        draw.text((c * cell + 3, 3), title[:26], fill="black")

    def put(arr, r, c):
        sheet.paste(Image.fromarray(arr).resize((cell, cell), Image.Resampling.BILINEAR), (c * cell, header + r * cell))

    for r in range(n_rows):
        s = samples[r]
        put(_overlay(s.image, s.masks[level]), r, 0)
        c = 1
        for name, items in outputs.items():
            has_mask = any(p is not None for _, p in items)
            if r < len(items):
                img, pred = items[r]
                put(img, r, c)
                if has_mask and pred is not None:
                    put(_overlay(img, pred, (0, 255, 0)), r, c + 1)
            c += 2 if has_mask else 1
        draw.text((3, header + r * cell + 3), s.prompt()[:24], fill="yellow")
    return sheet


def save_images(out: str, method: str, level: int, batch, outs, preds) -> None:
    folder = os.path.join(out, "images", method, f"s{level}")
    os.makedirs(folder, exist_ok=True)
    for k, (b, o) in enumerate(zip(batch, outs)):
        Image.fromarray(o).save(os.path.join(folder, f"{b.key}.png"))
        if preds is not None:
            Image.fromarray(preds[k].astype(np.uint8) * 255).save(os.path.join(folder, f"{b.key}_mask.png"))
