"""`smartbrush eval` end to end on a 4-sample benchmark with tiny models, and the contamination check."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from smartbrush.cli import main
from smartbrush.config import RenderConfig, load_schedule
from smartbrush.eval import contamination
from smartbrush.eval.benchmark import read_benchmark
from smartbrush.pipeline.imaging.masks import mask_box, mask_to_rle
from smartbrush.pipeline.render.samples import render_sample
from smartbrush.pipeline.storage.manifest import finalize_set
from smartbrush.pipeline.storage.shards import write_shard
from tests.tiny_extractors import tiny_fid_torchscript
from tests.test_sampling import (tiny_components, tiny_scheduler, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae,
                                 write_run_folder)

R = 32
LABELS = ["ball", "cup", "dog", "kite"]


def _instance(image_id: int, seed: int) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    image = np.clip(np.stack([xx * 4, yy * 4, np.full_like(xx, 30 * seed % 255)], -1)
                    + rng.integers(-15, 15, (64, 64, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    cv2.ellipse(mask, (30 + seed % 5, 32), (22, 14 + seed % 4), 25 * seed, 0, 360, 1, -1)
    image[mask > 0] = (200, 40 + 10 * seed % 200, 40)
    rle = mask_to_rle(mask > 0)
    label = LABELS[seed % 4]
    row = {"instance_id": f"test_val_{image_id}_1", "source": "test", "split": "val", "image_id": str(image_id),
           "annotation_id": "1", "image_path": f"/x/{image_id}.jpg", "image_width": 64, "image_height": 64,
           "image_sha256": hashlib.sha256(image.tobytes()).hexdigest(), "category_id": "1", "label": label,
           "box_xyxy": list(mask_box(mask > 0)), "area": int(mask.sum()), "iscrowd": False,
           "mask_rle_counts": rle["counts"], "mask_rle_size": rle["size"],
           "captions": [{"text": label, "model": "label", "revision": "", "settings": ""},
                        {"text": f"a photo of a {label}", "model": "blip", "revision": "r", "settings": "{}"}]}
    return image, row


def write_shard_set(out: str, instances: list[tuple[int, int]], schedule: str = "exact-box") -> str:
    """An inpainting shard set (shard + manifest) of (image_id, seed) instances, as `smartbrush build` writes one."""
    sched = load_schedule(schedule)
    samples = []
    for image_id, seed in instances:
        image, row = _instance(image_id, seed)
        samples.append((row["instance_id"], render_sample(image, row, sched, RenderConfig(resolution=R))))
    os.makedirs(out, exist_ok=True)
    info, _ = write_shard(out, "inpainting-000000.tar", samples)
    finalize_set(out, "inpainting", {"test": True}, sched.to_json(), [], len(samples), [info], [])
    return out


def lineage_for(shard_sets: list[str]) -> dict:
    return {"schema": "smartbrush.lineage", "shard_sets": [
        {"path": p, "kind": "inpainting",
         "manifest_sha256": hashlib.sha256(open(os.path.join(p, "manifest.json"), "rb").read()).hexdigest()}
        for p in shard_sets]}


def tiny_clip_folder(folder: str) -> str:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = tiny_tokenizer(os.path.join(folder, "_src"))
    torch.manual_seed(0)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    root = tmp_path_factory.mktemp("eval")
    bench = write_shard_set(str(root / "bench"), [(i, i) for i in range(1, 5)])
    train = write_shard_set(str(root / "train"), [(100 + i, 10 + i) for i in range(4)])
    leaky = write_shard_set(str(root / "leaky"), [(3, 7), (200, 8)])  # image 3 is a benchmark image
    clean_run = write_run_folder(str(root / "run"), levels=2, lineage=lineage_for([train]))
    leaky_run = write_run_folder(str(root / "leaky_run"), levels=2, lineage=lineage_for([train, leaky]))
    tok = tiny_tokenizer(str(root / "tok"))
    common = dict(vae=tiny_vae(1), text_encoder=tiny_text_encoder(tok, 1), tokenizer=tok, scheduler=tiny_scheduler(),
                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    StableDiffusionInpaintPipeline(unet=tiny_unet(9, 4, None, 1), **common).save_pretrained(root / "sd-inpaint")
    StableDiffusionPipeline(unet=tiny_unet(4, 4, None, 2), **common).save_pretrained(root / "sd-base")
    return {"root": root, "bench": bench, "train": train, "leaky": leaky, "run": clean_run, "leaky_run": leaky_run,
            "fid": tiny_fid_torchscript(str(root / "fid.pt")), "clip": tiny_clip_folder(str(root / "clip"))}


def test_benchmark_reader_gives_images_masks_and_prompts(world):
    samples = read_benchmark(world["bench"])
    assert [s.key for s in samples] == [f"test_val_{i}_1" for i in range(1, 5)]
    for s in samples:
        assert s.image.shape == (R, R, 3) and len(s.masks) == 2
        assert not (s.masks[0] & ~s.masks[1]).any() and s.masks[0].any()
        x0, y0, x1, y1 = s.box
        assert s.masks[1][y0:y1, x0:x1].all() and s.masks[1].sum() == (x1 - x0) * (y1 - y0)
    assert samples[0].prompt("label") == "cup" and samples[0].prompt("caption") == "a photo of a cup"


def test_contamination_check_finds_shared_images_by_id_and_by_content(world):
    samples = read_benchmark(world["bench"])
    clean = contamination.check(world["run"], samples)
    assert clean.checked and clean.benchmark_samples_overlapping == 0
    assert clean.shard_sets[0]["samples_read"] == 4 and clean.shard_sets[0]["manifest_matches_lineage"]
    leaky = contamination.check(world["leaky_run"], samples)
    hits = {(o["benchmark_key"], o["by"]) for o in leaky.overlaps}
    # (3, 7): same source image id as benchmark sample 3; (200, 8): other id, but the content of image 4's
    # seed differs, so only one sample overlaps by id. A copy under another id is caught by its sha256:
    assert ("test_val_3_1", "source_image_id") in hits
    assert leaky.benchmark_samples_overlapping == 1
    copy = write_shard_set(str(world["root"] / "copy"), [(999, 2)])  # benchmark image 2's pixels, new id
    run = write_run_folder(str(world["root"] / "copy_run"), levels=2, lineage=lineage_for([copy]))
    found = contamination.check(run, samples)
    assert [(o["benchmark_key"], o["by"]) for o in found.overlaps] == [("test_val_2_1", "image_sha256")]
    gone = write_run_folder(str(world["root"] / "gone_run"), levels=2,
                            lineage={"schema": "smartbrush.lineage", "shard_sets": [
                                {"path": str(world["root"] / "deleted"), "kind": "inpainting", "manifest_sha256": "0"}]})
    with pytest.raises(contamination.ContaminationError, match="not readable"):
        contamination.check(gone, samples)
    assert not contamination.check(str(world["root"]), samples).checked  # no lineage.json: not checked


@pytest.mark.slow
def test_eval_end_to_end(world, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "--checkpoint", world["run"], "--benchmark", world["bench"], "--out", str(out),
            "--sd-inpaint", str(world["root"] / "sd-inpaint"), "--sd-base", str(world["root"] / "sd-base"),
            "--fid-torchscript", world["fid"], "--clip", world["clip"], "--steps", "2", "--batch-size", "2"]
    assert main(args) == 0
    result = json.loads((out / "metrics.json").read_text())
    methods = ["smartbrush", "smartbrush-noswitch", "sd-inpaint", "sd-blend"]
    assert sorted(result["methods"]) == sorted(methods)
    assert result["levels"] == [{"benchmark_level": 0, "precision": 0, "type": "exact"},
                                {"benchmark_level": 1, "precision": 1, "type": "box"}]
    assert result["postprocess"]["composite"] == "given"
    assert result["contamination"]["checked"] and result["contamination"]["benchmark_samples_overlapping"] == 0
    fid_sha = hashlib.sha256(open(world["fid"], "rb").read()).hexdigest()
    assert result["feature_extractors"]["fid"]["sha256"] == fid_sha
    assert result["feature_extractors"]["fid"]["feature_size"] == 6
    assert result["comparable"]["fid_feature_size"] == 6 and result["comparable"]["resolution"] == R
    rows = {(r["method"], r["level"], r["metric"]): r for r in result["metrics"]}
    samples = read_benchmark(world["bench"])
    given_iou_box = float(np.mean([s.masks[0].sum() / s.masks[1].sum() for s in samples]))
    for m in methods:
        for lv in (0, 1):
            assert rows[(m, lv, "fid")]["samples"] == 4 and rows[(m, lv, "fid")]["value"] >= 0
            assert rows[(m, lv, "fid")]["feature_sha256"] == fid_sha
            assert rows[(m, lv, "local_fid")]["value"] >= 0
            assert rows[(m, lv, "clip_score")]["value"] >= 0
            assert rows[(m, lv, "clip_score")]["feature_sha256"] == result["feature_extractors"]["clip"]["sha256"]
            assert ((m, lv, "mask_iou") in rows) == m.startswith("smartbrush")
            # Every method pasted into its input through the given mask: the background is the input's.
            assert rows[(m, lv, "bg_mse_outside")]["value"] == 0.0 and rows[(m, lv, "bg_psnr_outside")]["value"] == 100.0
        # The exact level has no "inside the mask but outside the object" region.
        assert rows[(m, 0, "bg_mse_mask_not_object")]["value"] is None
        assert rows[(m, 1, "bg_mse_mask_not_object")]["samples"] == 4
    for m in ("smartbrush", "smartbrush-noswitch"):
        assert 0.0 <= rows[(m, 1, "mask_iou")]["value"] <= 1.0
        # What the head must beat: the given mask's own IoU with the object (1 at the exact level).
        assert rows[(m, 0, "mask_iou_given")]["value"] == 1.0
        assert rows[(m, 1, "mask_iou_given")]["value"] == pytest.approx(given_iou_box, rel=1e-12)
        assert 0.0 <= rows[(m, 1, "pred_mask_area")]["value"] <= 1.0
    with open(out / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == len(result["metrics"])
    md = (out / "metrics.md").read_text()
    assert "| sd-blend |" in md and "## box masks: benchmark level 1, checkpoint precision s = 1" in md
    assert "| method | FID | local FID | CLIP score | bg MSE | bg PSNR | mask IoU | given-mask IoU |" in md
    grid = Image.open(out / "grid_s1.png")
    assert grid.size == (160 * 7, 18 + 160 * 4)  # input + 4 methods + 2 predicted-mask columns; 4 rows
    assert (out / "config.yaml").exists()
    assert main(args) == 2  # an existing result is not overwritten

    # The same methods as they ship (SmartBrush's own composite, the baselines' decoded images), then
    # as decoded: only SmartBrush's native output keeps the input's background bit for bit.
    for composite in ("native", "none"):
        other = tmp_path / composite
        assert main(["eval", "--checkpoint", world["run"], "--benchmark", world["bench"], "--out", str(other),
                     "--sd-inpaint", str(world["root"] / "sd-inpaint"), "--methods", "smartbrush,sd-inpaint",
                     "--levels", "1", "--steps", "2", "--batch-size", "2", "--composite", composite,
                     "--fid-torchscript", world["fid"]]) == 0
        got = {(r["method"], r["metric"]): r["value"] for r in json.loads((other / "metrics.json").read_text())["metrics"]}
        assert (got[("smartbrush", "bg_mse_outside")] == 0.0) == (composite == "native")
        assert got[("sd-inpaint", "bg_mse_outside")] > 0
    # Runs under different post-processing do not share a table; the refusal names the difference.
    assert main(["eval", "compare", str(out / "metrics.json"), str(tmp_path / "native" / "metrics.json")]) == 2
    assert main(["eval", "compare", str(tmp_path / "native"), str(tmp_path / "native"), "--out",
                 str(tmp_path / "cmp")]) == 0
    cmp_rows = list(csv.DictReader(open(tmp_path / "cmp" / "compare.csv")))
    assert [(r["run"], r["method"]) for r in cmp_rows] == [("native#1", "smartbrush"), ("native#1", "sd-inpaint"),
                                                          ("native#2", "smartbrush"), ("native#2", "sd-inpaint")]


@pytest.mark.slow
def test_eval_refuses_a_contaminated_benchmark_unless_allowed(world, tmp_path):
    args = ["eval", "--checkpoint", world["leaky_run"], "--benchmark", world["bench"], "--methods", "smartbrush",
            "--steps", "1", "--levels", "1"]
    assert main(args + ["--out", str(tmp_path / "refused")]) == 3
    assert not (tmp_path / "refused" / "metrics.json").exists()
    assert main(args + ["--out", str(tmp_path / "allowed"), "--allow-overlap"]) == 0
    result = json.loads((tmp_path / "allowed" / "metrics.json").read_text())
    c = result["contamination"]
    assert c["allowed"] and c["benchmark_samples_overlapping"] == 1
    assert c["overlaps"][0]["benchmark_key"] == "test_val_3_1"
    assert {r["metric"] for r in result["metrics"]} >= {"bg_psnr_outside", "mask_iou"}
    assert any("fid" in n for n in result["not_computed"])


def test_eval_flags_are_checked(world, tmp_path):
    base = ["eval", "--checkpoint", world["run"], "--benchmark", world["bench"], "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main(base + ["--stepz", "2"])
    with pytest.raises(ValueError, match="composite"):
        (tmp_path / "p.yaml").write_text("composite: pasted\n")
        main(base + ["--config", str(tmp_path / "p.yaml")])
    with pytest.raises(ValueError, match="sd_inpaint"):
        main(base + ["--methods", "sd-inpaint"])
    with pytest.raises(ValueError, match="unknown keys"):
        (tmp_path / "c.yaml").write_text("sampler:\n  stepz: 3\n")
        main(base + ["--config", str(tmp_path / "c.yaml")])


def test_paper_protocols_are_presets_under_config_and_flags(tmp_path):
    from smartbrush.eval.config import load_eval_config, protocols

    assert protocols() == ["paper-coco", "paper-openimages"]
    cfg = load_eval_config("", {}, protocol="paper-coco")
    assert (cfg.protocol, cfg.prompt, cfg.composite, cfg.levels) == ("paper-coco", "label", "given", [0, 1])
    assert (cfg.metrics.fid_size, cfg.metrics.local_size, cfg.metrics.fid_antialias) == (256, 256, False)
    (tmp_path / "c.yaml").write_text("metrics:\n  local_size: 299\n")
    cfg = load_eval_config(str(tmp_path / "c.yaml"), {"metrics": {"fid_size": 299}}, protocol="paper-openimages")
    assert (cfg.protocol, cfg.metrics.fid_size, cfg.metrics.local_size) == ("paper-openimages", 299, 299)
    with pytest.raises(ValueError, match="protocol 'paper-laion'"):
        load_eval_config("", {}, protocol="paper-laion")
