"""BLIP captioning: a tiny randomly initialised BLIP written by the test, the captioner on its own,
and `smartbrush caption` through Beam (multi-processing, 2 workers) on a hand-made COCO set and on
../shared/data/coco_val2017_tiny when present."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import glob
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from smartbrush.config import RenderConfig
from smartbrush.pipeline.commands import caption as caption_job
from smartbrush.pipeline.caption.blip import (BlipCaptioner, CaptionerConfigError, GenerationSettings, RuntimeSettings,
                                      attach_captions, clean_caption, degenerate_detail, normalise_batch,
                                      strip_prompt)
from smartbrush.pipeline.storage.manifest import read_manifest, read_rejected, reconciles
from smartbrush.pipeline.imaging.images import load_image_and_hash
from smartbrush.pipeline.commands.verify import verify_shard_set
from tests.tiny_blip import write_random_blip
from smartbrush.schemas import instance_table

WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
COCO_TINY = "/work/shared/data/coco_val2017_tiny"
if not os.path.isdir(COCO_TINY):
    COCO_TINY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "coco_val2017_tiny")


@pytest.fixture(scope="module")
def model_a(tmp_path_factory):
    return write_random_blip(str(tmp_path_factory.mktemp("blip_a")), seed=0)


@pytest.fixture(scope="module")
def model_b(tmp_path_factory):
    return write_random_blip(str(tmp_path_factory.mktemp("blip_b")), seed=1)


# ---------------------------------------------------------------- plain functions

def test_strip_prompt():
    assert strip_prompt("a picture of a dog", "a picture of") == "a dog"
    assert strip_prompt("A Picture of  a dog ", "a picture of") == "a dog"
    assert strip_prompt("a picture of: a dog", "a picture of:") == "a dog"
    assert strip_prompt("a picture of : a dog", "a picture of:") == "a dog"  # tokenizers re-space punctuation
    assert strip_prompt("a photo of a dog", "a picture of") == "a photo of a dog"
    assert strip_prompt("a picture", "a picture of") == "a picture"
    assert strip_prompt(" two cats ", "") == "two cats"


def test_degenerate_captions():
    assert degenerate_detail("a dog on a couch") is None
    assert degenerate_detail("dog") is None
    assert degenerate_detail("") == "no words in ''"
    assert degenerate_detail(" . , ") == "no words in ' . , '"
    assert degenerate_detail("bird bird bird") == "one word repeated: 'bird bird bird'"
    assert degenerate_detail("Bird bird, bird.") is not None
    assert clean_caption("a picture of a dog", "a picture of") == ("a dog", "")
    assert clean_caption("a picture of", "a picture of") == (None, "no words in '' (decoded 'a picture of')")
    assert clean_caption("a picture of the the the", "a picture of")[0] is None
    assert clean_caption("", "") == (None, "no words in ''")


def test_from_pretrained_reads_the_checkpoint(model_a):
    c = BlipCaptioner.from_pretrained(model_a)
    assert (c.ckpt.model_type, c.ckpt.model, c.name, c.needs_image) == ("blip", model_a, "blip", True)
    assert c.ckpt.revision.startswith("sha256:") and c.ckpt.hub_revision is None
    assert (c.image.height, c.image.width, c.image.resample) == (32, 32, 3)
    assert c.image.fill() == (123, 117, 104)  # CLIP mean colour: zero after normalisation
    assert BlipCaptioner.from_pretrained(model_a).ckpt.revision == c.ckpt.revision
    rec = c.record("a dog")
    assert (rec["text"], rec["model"], rec["revision"]) == ("a dog", model_a, c.ckpt.revision)
    assert json.loads(rec["settings"]) == {
        "crop": {"grey_background": False, "margin": 0.1, "min_side": 64},
        "generation": {"decoding": "greedy", "dtype": "float32", "max_new_tokens": 20, "num_beams": 1, "prompt": ""},
        "image_size": [32, 32]}


def test_bad_models_fail_with_a_clear_message(tmp_path, model_a):
    with pytest.raises(CaptionerConfigError, match="model path does not exist"):
        BlipCaptioner.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CaptionerConfigError, match="a file"):
        BlipCaptioner.from_pretrained(str(tmp_path / "weights.bin"))
    with pytest.raises(CaptionerConfigError, match="no config.json"):
        BlipCaptioner.from_pretrained(str(tmp_path))
    with pytest.raises(CaptionerConfigError, match="not a hub model that could be loaded"):
        BlipCaptioner.from_pretrained("nobody-xyz/not-a-model")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(CaptionerConfigError, match="not a BLIP checkpoint .model_type 'bert'"):
        BlipCaptioner.from_pretrained(str(bert))
    itm = tmp_path / "itm"
    shutil.copytree(model_a, itm)
    cfg = json.loads((itm / "config.json").read_text())
    (itm / "config.json").write_text(json.dumps({**cfg, "architectures": ["BlipForImageTextRetrieval"]}))
    with pytest.raises(CaptionerConfigError, match="no captioning head"):
        BlipCaptioner.from_pretrained(str(itm))
    with pytest.raises(CaptionerConfigError, match="needs --device cuda"):
        BlipCaptioner.from_pretrained(model_a, generation=GenerationSettings(dtype="bfloat16"))
    with pytest.raises(CaptionerConfigError, match="batch sizes"):
        BlipCaptioner.from_pretrained(model_a, runtime=RuntimeSettings(min_batch_size=8, max_batch_size=4))


def test_caption_job_fails_before_the_pipeline(tmp_path, model_a):
    out = tmp_path / "out"
    argv = ["--table", str(tmp_path), "--out", str(out), "--captioner", "blip"]
    with pytest.raises(SystemExit, match="model path does not exist"):
        caption_job.run(argv + ["--model", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="needs --model"):
        caption_job.run(argv)
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        caption_job.run(["--help"])
    assert e.value.code == 0


def test_normalise_batch_matches_the_image_processor(model_a):
    import torch
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    c = BlipCaptioner.from_pretrained(model_a)
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(3)]
    expected = BlipImageProcessorPil.from_pretrained(model_a)(images=raw, return_tensors="pt").pixel_values
    resized = [np.asarray(Image.fromarray(r).resize((32, 32), resample=c.image.resample)) for r in raw]
    got = normalise_batch(resized, c.image, "cpu", torch.float32)
    assert got.shape == expected.shape == (3, 3, 32, 32)
    assert float((got - expected).abs().max()) < 1e-5


def _crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // (i + 1)).astype(np.uint8) for i in range(n)]


def test_captioner_batches_prompt_and_beam_search(model_a):
    import torch
    from transformers import AutoTokenizer, BlipForConditionalGeneration

    c = BlipCaptioner.from_pretrained(model_a)
    crops = _crops(6)
    texts = c.caption_texts(crops)
    assert texts == [c.caption_texts([crop])[0] for crop in crops]  # a crop's caption ignores its batch
    assert len(set(texts)) > 1  # the init makes captions depend on the image
    # The model's own generate() on the image processor's pixel values gives the same texts.
    model = BlipForConditionalGeneration.from_pretrained(model_a).eval()
    tok = AutoTokenizer.from_pretrained(model_a)
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    pixels = BlipImageProcessorPil.from_pretrained(model_a)(images=crops, return_tensors="pt").pixel_values
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels, max_new_tokens=20)
    assert texts == [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    rows = [{"instance_id": str(i)} for i in range(6)]
    records = c.caption_rows(rows, crops)
    assert [r["text"] if r else None for r in records] == [clean_caption(t, "")[0] for t in texts]

    prompted = BlipCaptioner.from_pretrained(model_a, generation=GenerationSettings(prompt="a picture of",
                                                                                    max_new_tokens=5))
    raw = prompted.caption_texts(crops[:2])
    assert all(t.startswith("a picture of") for t in raw)
    for t, r in zip(raw, prompted.caption_rows(rows[:2], crops[:2])):
        assert r is None or (r["text"] == strip_prompt(t, "a picture of") and not r["text"].startswith("a picture"))
    beam = BlipCaptioner.from_pretrained(model_a, generation=GenerationSettings(num_beams=3, max_new_tokens=6))
    assert len(beam.caption_texts(crops[:2])) == 2
    assert json.loads(beam.record("x")["settings"])["generation"]["decoding"] == "beam"


def test_attach_captions_keeps_other_captions(model_a):
    c = BlipCaptioner.from_pretrained(model_a, generation=GenerationSettings(prompt="a picture of"))
    label = {"text": "dog", "model": "label", "revision": "", "settings": "{}"}
    rows = [{"instance_id": i, "source": "coco", "image_path": "p.jpg", "captions": [label]} for i in ("a", "b")]
    out, dropped = attach_captions(rows, {"a": "a picture of a red dog", "b": "a picture of"}, c)
    assert out[0]["captions"] == [label, c.record("a red dog")]
    assert out[1]["captions"] == [label]
    assert [(d["record_id"], d["reason"], d["stage"]) for d in dropped] == [("b", "caption_degenerate", "caption")]
    again, _ = attach_captions(out, {"a": "a picture of a blue dog", "b": "a picture of a cat"}, c)
    assert again[0]["captions"] == [label, c.record("a blue dog")]  # same model and settings: replaced
    with pytest.raises(ValueError, match="no model output"):
        attach_captions(rows, {"a": "x"}, c)


def _write_tiny_blip2(path):
    """A tiny random BLIP-2 (OPT decoder) with a small byte-level BPE tokenizer."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, GPT2Tokenizer, OPTConfig
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    os.makedirs(path, exist_ok=True)
    words = ["a", "picture", "of", "dog", "cat", "red"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "Ġ": 3}
    merges = []
    for ch in sorted(set("".join(words))):
        vocab.setdefault(ch, len(vocab))
    for w in words:
        parts = ["Ġ"] + list(w)
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if f"{parts[0]} {parts[1]}" not in merges:
                merges.append(f"{parts[0]} {parts[1]}")
            vocab.setdefault(merged, len(vocab))
            parts = [merged] + parts[2:]
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = GPT2Tokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), bos_token="</s>",
                        eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    processor = Blip2Processor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tok, num_query_tokens=4)
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = Blip2Config(
        vision_config=dict(small, image_size=32, patch_size=16),
        qformer_config=dict(small, vocab_size=len(tok), encoder_hidden_size=32),
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                              num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32,
                              bos_token_id=1, eos_token_id=1, pad_token_id=0).to_dict(),
        num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    Blip2ForConditionalGeneration(config).eval().save_pretrained(path)
    processor.save_pretrained(path)
    return tok


def test_blip2_checkpoints_use_blip2(tmp_path):
    tok = _write_tiny_blip2(str(tmp_path))
    c = BlipCaptioner.from_pretrained(str(tmp_path), generation=GenerationSettings(max_new_tokens=4))
    assert c.ckpt.model_type == "blip-2"
    runtime = c.load_runtime()
    assert type(runtime.model).__name__ == "Blip2ForConditionalGeneration"
    assert len(c.caption_texts(_crops(3))) == 3
    prompted = BlipCaptioner.from_pretrained(str(tmp_path), generation=GenerationSettings(prompt=" a picture",
                                                                                           max_new_tokens=4))
    decoded_prompt = tok.decode(tok(" a picture").input_ids, skip_special_tokens=True).strip()
    assert decoded_prompt == "a picture"
    assert all(t.startswith(decoded_prompt) for t in prompted.caption_texts(_crops(2)))


# ---------------------------------------------------------------- the Beam job

def _hand_made_coco(root):
    """Four images (one missing on disk) and seven polygons: at borders, tiny, larger than the image."""
    rng = np.random.default_rng(3)
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir)
    sizes = {1: (96, 64), 2: (64, 96), 3: (80, 80), 4: (50, 50)}
    images = []
    for image_id, (w, h) in sizes.items():
        name = f"{image_id:06d}.png"
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        if image_id != 4:
            yy, xx = np.mgrid[0:h, 0:w]
            pixels = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 256, (h, w))], axis=2).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(images_dir, name))

    def square(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    polygons = [(1, 1, square(10, 10, 40, 40)), (1, 2, square(70, 0, 96, 30)), (1, 1, square(50, 50, 53, 53)),
                (2, 2, square(0, 0, 64, 96)), (2, 1, [[5, 5, 60, 5, 30, 40]]), (3, 2, square(20, 30, 60, 50)),
                (4, 1, square(5, 5, 20, 20))]
    anns = [{"id": 100 + i, "image_id": img, "category_id": cat, "iscrowd": 0, "segmentation": seg,
             "area": 0, "bbox": [0, 0, 0, 0]} for i, (img, cat, seg) in enumerate(polygons)]
    path = os.path.join(root, "instances_hand.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]}, f)
    return path, images_dir


def _read_table(d):
    files = sorted(glob.glob(os.path.join(d, "instances-*.parquet")))
    return {r["instance_id"]: r for r in pq.read_table(files).to_pylist()}


def _break_box(table_dir, instance_id, box):
    """Edit one row of an ingested table in place (same files, same schema)."""
    for f in glob.glob(os.path.join(table_dir, "instances-*.parquet")):
        rows = pq.read_table(f).to_pylist()
        for r in rows:
            if r["instance_id"] == instance_id:
                r["box_xyxy"] = box
        pq.write_table(pa.Table.from_pylist(rows, schema=instance_table.SCHEMA), f)


def _model_captions(row, model):
    return [c for c in row["captions"] if c["model"] == model]


def _expected_texts(rows, captioner):
    """Each row's caption computed outside Beam, one crop at a time (None: degenerate)."""
    out = {}
    for r in rows:
        image, _ = load_image_and_hash(r["image_path"], (r["image_width"], r["image_height"]), RenderConfig())
        raw = captioner.caption_texts([captioner.crop_input(image, r)])[0]
        out[r["instance_id"]] = clean_caption(raw, captioner.generation.prompt)[0]
    return out


def _check_model_captions(table, captioner, out_dir):
    """Exactly one caption by this model per row, equal to the reference, or a recorded drop."""
    expected = _expected_texts(table.values(), captioner)
    dropped = {r["record_id"]: r for r in pq.read_table(os.path.join(out_dir, "captions_dropped.parquet")).to_pylist()}
    for iid, row in table.items():
        mine = _model_captions(row, captioner.model_id)
        if expected[iid] is None:
            assert mine == [] and dropped[iid]["reason"] == "caption_degenerate"
        else:
            assert mine == [captioner.record(expected[iid])] and iid not in dropped
    manifest = read_manifest(out_dir)
    lineage = manifest["lineage"]
    assert lineage["captioner"]["model"] == captioner.model_id
    assert lineage["captioner"]["revision"] == captioner.ckpt.revision
    assert lineage["captions_added"] == sum(v is not None for v in expected.values())
    assert lineage["captions_dropped"] == ({"caption_degenerate": len(dropped)} if dropped else {})
    return expected


def _ingest(annotations, images, out, extra=()):
    from smartbrush.pipeline.commands.build import run_ingest

    run_ingest(["--coco-annotations", annotations, "--coco-images", images, "--out", out, *extra, *WORKERS],
               source="coco")


def _caption(table, out, *flags):
    return caption_job.run(["--table", table, "--out", out, *flags, *WORKERS])


@pytest.mark.slow
def test_caption_job_on_hand_made_coco(tmp_path, model_a, model_b):
    annotations, images = _hand_made_coco(str(tmp_path / "coco"))
    table = str(tmp_path / "table")
    _ingest(annotations, images, table, ["--min-area", "1", "--min-box-side", "1"])
    ingested = _read_table(table)
    assert len(ingested) == 7
    broken = "coco_hand_2_104"
    _break_box(table, broken, [500, 500, 510, 510])
    missing = "coco_hand_4_106"

    labelled = str(tmp_path / "label")
    _caption(table, labelled, "--captioner", "label")
    label_table = _read_table(labelled)
    assert all(r["captions"] == [{"text": r["label"], "model": "label", "revision": "", "settings": "{}"}]
               for r in label_table.values())

    flags_a = ["--captioner", "blip", "--model", model_a, "--min-batch-size", "2", "--max-batch-size", "3"]
    out_a = str(tmp_path / "a")
    result = _caption(labelled, out_a, *flags_a)
    a = BlipCaptioner.from_pretrained(model_a)
    table_a = _read_table(out_a)
    assert set(table_a) == set(ingested) - {broken, missing}
    rejected = {(r["record_id"], r["stage"], r["reason"]) for r in read_rejected(out_a)}
    assert rejected == {(broken, "caption", "crop_failed"), (missing, "caption", "image_missing")}
    manifest = read_manifest(out_a)
    assert manifest["kind"] == "instance_table" and reconciles(manifest["counts"])
    assert manifest["counts"]["inputs"] == 7 and manifest["counts"]["written"] == 5
    assert verify_shard_set(out_a) == []
    for row in table_a.values():
        assert _model_captions(row, "label") == label_table[row["instance_id"]]["captions"]
    expected_a = _check_model_captions(table_a, a, out_a)

    metrics = caption_job.caption_metrics(result)
    assert metrics["crops"] == metrics["crops_captioned"] == 5 and metrics["crops_rejected"] == 2
    assert metrics["images"] == 4 and metrics["captions_added"] + metrics["captions_degenerate"] == 5
    assert metrics["batch_size"]["max"] >= 2 and metrics["batch_size"]["count"] == metrics["batches"] < 5

    # Another model adds its captions and loses none.
    out_b = str(tmp_path / "b")
    _caption(out_a, out_b, "--captioner", "blip", "--model", model_b)
    table_b = _read_table(out_b)
    assert set(table_b) == set(table_a)
    b = BlipCaptioner.from_pretrained(model_b)
    assert b.ckpt.revision != a.ckpt.revision
    for iid, row in table_b.items():
        assert [c for c in row["captions"] if c["model"] != model_b] == table_a[iid]["captions"]
    _check_model_captions(table_b, b, out_b)
    assert reconciles(read_manifest(out_b)["counts"]) and verify_shard_set(out_b) == []

    # The same model again, from the same input: identical captions.
    out_a2 = str(tmp_path / "a2")
    _caption(labelled, out_a2, *flags_a)
    assert _read_table(out_a2) == table_a
    assert any(v is not None for v in expected_a.values())


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(COCO_TINY), reason="../shared/data/coco_val2017_tiny not present")
def test_caption_job_on_coco_val2017_tiny(tmp_path, model_a):
    table = str(tmp_path / "table")
    _ingest(os.path.join(COCO_TINY, "annotations", "instances_val2017.json"), os.path.join(COCO_TINY, "val2017"),
            table, ["--max-instances-per-image", "2"])
    ingested = _read_table(table)
    out = str(tmp_path / "captioned")
    result = _caption(table, out, "--captioner", "blip", "--model", model_a, "--min-batch-size", "16",
                      "--max-batch-size", "16")
    captioned = _read_table(out)
    assert set(captioned) == set(ingested) and read_rejected(out) == read_rejected(table)
    assert reconciles(read_manifest(out)["counts"]) and verify_shard_set(out) == []
    _check_model_captions(captioned, BlipCaptioner.from_pretrained(model_a), out)
    m = caption_job.caption_metrics(result)
    assert m["crops"] == len(ingested) and m["batch_size"]["max"] == 16
    assert m["batch_size"]["count"] < len(ingested) / 4
