"""The training stream and loop: disjoint ranks, seeded sequences, the 80/20 mix, exact resume, the
tiny preset end to end, and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from smartbrush.pipeline.commands.build import run_build
from smartbrush.pipeline.commands.demo import sample_build_args
from smartbrush.pipeline.render.samples import encode_json, encode_jpeg
from smartbrush.pipeline.storage.manifest import finalize_set
from smartbrush.pipeline.storage.shards import shard_name, write_shard
from smartbrush.train.config import load_train_config
from smartbrush.train.stream import BatchStream, ShardSetError, batch_masks, check_shard_sets, read_shard_set


def _build(root, name, *extra):
    out = str(root / name)
    run_build(sample_build_args(out, str(root / f"{name}-in")) + ["--resolution", "64", "--samples-per-shard", "6",
                                                                   *extra])
    return out


def _t2i_set(root, n=12):
    """A small text-to-image set as `smartbrush laion` lays it out (img2dataset's jpg/txt/json)."""
    import numpy as np

    out = root / "t2i"
    out.mkdir()
    shards = []
    for s in range(2):
        samples = []
        for i in range(n // 2):
            img = np.full((64, 64, 3), 30 * i, np.uint8)
            samples.append((f"{s:05d}{i:04d}", {"jpg": encode_jpeg(img, 90), "txt": f"a picture {i}".encode(),
                                                 "json": encode_json({"caption": f"a picture {i}"})}))
        shards.append(write_shard(str(out), shard_name("t2i", s), samples)[0])
    finalize_set(str(out), "text_to_image", {}, None, [], n, shards, [])
    return str(out)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"inpainting": _build(root, "inp"), "t2i": _t2i_set(root), "root": root}


def _stream(sets, **kw):
    inp = [read_shard_set(sets["inpainting"], "inpainting")]
    t2i = [read_shard_set(sets["t2i"], "text_to_image")] if kw.pop("t2i", False) else []
    args = dict(batch_size=4, resolution=64, num_levels=5, seed=0)
    args.update(kw)
    return BatchStream(inp, t2i, **args)


def _summary(batch):
    return (batch["key"], batch["level"].tolist(), batch["text"], round(float(batch["image"].sum()), 3))


def test_ranks_read_disjoint_shards(sets):
    r0, r1 = _stream(sets, rank=0, world=2), _stream(sets, rank=1, world=2)
    k0 = {k for j in range(20) for k in r0.batch(j)["key"]}
    k1 = {k for j in range(20) for k in r1.batch(j)["key"]}
    assert k0 and k1 and not (k0 & k1)
    assert {s["url"] for s in r0.shards["inpainting"]}.isdisjoint({s["url"] for s in r1.shards["inpainting"]})


def test_same_seed_same_batches_in_another_process(sets):
    here = [_summary(_stream(sets).batch(j)) for j in range(3)]
    code = ("import json, sys; from tests.test_train_loop import _stream, _summary; "
            f"s = _stream({{'inpainting': {sets['inpainting']!r}}}); "
            "print(json.dumps([_summary(s.batch(j)) for j in range(3)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(here))
    assert _summary(_stream(sets, seed=1).batch(0)) != here[0]


def test_mix_is_80_20(sets):
    s = _stream(sets, t2i=True, batch_size=50)
    flags = torch.cat([s.batch(j)["is_inpainting"] for j in range(40)])
    assert len(flags) == 2000 and 0.77 <= flags.float().mean().item() <= 0.83
    batch = s.batch(0)
    t2i = ~batch["is_inpainting"]
    mask, exact = batch_masks(batch)
    assert t2i.any() and torch.all(mask[t2i]) and not torch.any(exact[t2i])
    assert torch.all(batch["level"][t2i] == 4)


def test_resumed_stream_yields_the_uninterrupted_batches(sets):
    full = [_summary(b) for b, _ in zip(torch.utils.data.DataLoader(_stream(sets), batch_size=None), range(6))]
    resumed = torch.utils.data.DataLoader(_stream(sets, start_batch=3), batch_size=None, num_workers=2)
    assert [_summary(b) for b, _ in zip(resumed, range(3))] == full[3:]


def test_levels_and_masks_nest(sets):
    b = _stream(sets, batch_size=16).batch(0)
    assert set(b["level"].tolist()) <= set(range(5))
    mask, exact = batch_masks(b)
    assert exact.any() and not torch.any(exact & ~mask)  # the exact mask lies inside every level
    for k, level in enumerate(b["level"].tolist()):  # the mask is the sample's own level
        assert torch.equal(mask[k], b["level_map"][k] <= level)


def test_shard_sets_that_disagree_fail_naming_both(sets):
    box = _build(sets["root"], "box", "--schedule", "exact-box")
    a, b = read_shard_set(sets["inpainting"], "inpainting"), read_shard_set(box, "inpainting")
    with pytest.raises(ShardSetError, match=rf"{sets['inpainting']} has 5 levels .* {box} has 2"):
        check_shard_sets([a, b], [], None)
    with pytest.raises(ShardSetError, match="the config says 3 precision levels"):
        check_shard_sets([a], [], 3)
    with pytest.raises(ShardSetError, match="a inpainting shard set, given as text_to_image"):
        read_shard_set(sets["inpainting"], "text_to_image")


@pytest.mark.slow
def test_tiny_preset_trains_and_resumes_exactly(sets, tmp_path):
    from diffusers import UNet2DConditionModel

    from smartbrush.cli import main

    run = tmp_path / "run"
    args = ["train", "--config", "tiny", "--inpainting-shards", sets["inpainting"], "--t2i-shards", sets["t2i"],
            "--out", str(run), "--validation-shards", sets["inpainting"], "--validate-every", "15"]
    assert main(args) == 0
    losses = [json.loads(line) for line in open(run / "logs" / "losses.jsonl")]
    assert [r["step"] for r in losses] == list(range(1, 31))
    assert {"checkpoint-15", "checkpoint-30", "final", "lineage.json", "loss.png"} <= set(os.listdir(run))
    lineage = json.load(open(run / "lineage.json"))
    assert [s["kind"] for s in lineage["shard_sets"]] == ["inpainting", "text_to_image"]
    val = [json.loads(line) for line in open(run / "logs" / "validation.jsonl")]
    assert [v["step"] for v in val] == [15, 30] and val[0]["by_level"]
    unet = UNet2DConditionModel.from_pretrained(run / "final" / "unet")
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.num_class_embeds) == (9, 5, 5)
    # an interrupted run resumed from step 15 reproduces steps 16-30 exactly
    import shutil

    shutil.rmtree(run / "checkpoint-30")
    shutil.rmtree(run / "final")
    assert main(args) == 0
    again = [json.loads(line) for line in open(run / "logs" / "losses.jsonl")]
    assert again == losses
    resumed = UNet2DConditionModel.from_pretrained(run / "final" / "unet")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), resumed.state_dict().values()))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(sets, tmp_path, monkeypatch):
    from smartbrush.train import loop
    from smartbrush.train.stream import read_shard_set as read

    real, calls = loop.forward_loss, {"n": 0}

    def poisoned(*a, **kw):
        loss, parts, extra = real(*a, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 5 else loss), parts, extra

    monkeypatch.setattr(loop, "forward_loss", poisoned)
    cfg = load_train_config("tiny", {"max_steps": 10, "checkpoint_every": 2})
    with pytest.raises(loop.TrainingDiverged, match=r"loss is nan at step 5 .*checkpoint-4"):
        loop.train(cfg, [read(sets["inpainting"], "inpainting")], [], str(tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoint-4").is_dir() and not (tmp_path / "run" / "final").exists()


def test_missing_base_and_bad_flags_fail_before_training(sets, tmp_path, capsys):
    from smartbrush.cli import main

    with pytest.raises(SystemExit, match="no such model folder"):
        main(["train", "--inpainting-shards", sets["inpainting"], "--out", str(tmp_path / "r"),
              "--base", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit) as e:
        main(["train", "--inpainting-shards", sets["inpainting"], "--out", str(tmp_path / "r"), "--max-step", "3"])
    assert e.value.code == 2 and "--max-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown keys"):
        main(["train", "--config", str(_yaml(tmp_path, "data:\n  batchsize: 3\n")), "--inpainting-shards",
              sets["inpainting"], "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r" / "final").exists()


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p
