"""The training stream and loop: disjoint ranks, seeded sequences, the 80/20 mix, exact resume, the
tiny preset end to end, and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

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


def _old_sd_base(folder):
    """The tiny base with an SD v1.4-era scheduler config: no `clip_sample` key (loads as True)."""
    from smartbrush.model.tiny import build_tiny_sd

    build_tiny_sd(str(folder))
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    del config["clip_sample"]
    path.write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_tiny_preset_trains_and_resumes_exactly(sets, tmp_path):
    from diffusers import UNet2DConditionModel

    from smartbrush.cli import main
    from smartbrush.model.sampling_pipeline import SmartBrushPipeline

    run = tmp_path / "run"
    _old_sd_base(run / "base")  # the tiny preset builds RUN/base unless it is there
    tiny = yaml.safe_load((_preset_dir() / "tiny.yaml").read_text())
    config = _yaml(tmp_path, yaml.safe_dump({**tiny, "use_ema": True}))
    args = ["train", "--config", str(config), "--inpainting-shards", sets["inpainting"], "--t2i-shards", sets["t2i"],
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
    # final/ is a saved pipeline, with the scheduler config corrected as diffusers' SD pipelines correct it
    pipe = SmartBrushPipeline.from_pretrained(run / "final")
    assert pipe.scheduler.config.clip_sample is False
    assert json.load(open(run / "final" / "scheduler" / "scheduler_config.json"))["clip_sample"] is False
    pipe.set_progress_bar_config(disable=True)
    image = torch.zeros(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    out = pipe(prompt="a dog", image=image, mask_image=mask, precision=4, num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)
    # an interrupted run resumed from step 15 (EMA on) reproduces steps 16-30 and the final UNet exactly
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


def _preset_dir():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1] / "presets" / "train"


def test_ema_is_on_the_device_after_a_resume(tmp_path):
    """accelerate loads registered objects on the CPU; the EMA weights must follow the model's device."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.training_utils import EMAModel

    from smartbrush.train.loop import load_checkpoint

    model = torch.nn.Linear(3, 2)
    accelerator = Accelerator(project_config=ProjectConfiguration(project_dir=str(tmp_path)))
    model = accelerator.prepare(model)
    ema = EMAModel(model.parameters(), decay=0.9)
    accelerator.register_for_checkpointing(ema)
    ema.step(model.parameters())
    accelerator.save_state(str(tmp_path / "checkpoint-1"))
    saved = [p.clone() for p in ema.shadow_params]
    load_checkpoint(accelerator, str(tmp_path / "checkpoint-1"), ema, "meta")  # a device other than the CPU
    assert all(p.device.type == "meta" for p in ema.shadow_params) and ema.optimization_step == 1
    load_checkpoint(accelerator, str(tmp_path / "checkpoint-1"), ema, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, saved))


def test_global_batch_size_sets_the_accumulation():
    from smartbrush.train.loop import accumulation_steps

    cfg = load_train_config("sd-v1")
    assert cfg.global_batch_size == 1024 and cfg.max_steps == 20000  # the paper's batch and steps
    assert cfg.global_batch_size % (cfg.data.batch_size * 8) == 0
    assert [accumulation_steps(cfg, n) for n in (1, 8, 64)] == [1024 // cfg.data.batch_size,
                                                                 1024 // cfg.data.batch_size // 8, 1]
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(cfg, 3)
    plain = load_train_config("tiny", {"gradient_accumulation_steps": 3})
    assert accumulation_steps(plain, 4) == 3
    with pytest.raises(ValueError, match="global_batch_size"):
        load_train_config("tiny", {"global_batch_size": 5})


_TWO_RANKS = """
import json, os, sys
import torch
from smartbrush.train import loop
from smartbrush.train.config import load_train_config
from smartbrush.train.stream import read_shard_set

rank = int(os.environ["RANK"])
real, calls = loop.forward_loss, {"n": 0}

def poisoned(c, unet, batch, cfg, generator, device):
    loss, parts, extra = real(c, unet, batch, cfg, generator, device)
    if unet.training:
        calls["n"] += 1
    return (loss * float("nan") if rank == 1 and calls["n"] == 7 else loss), parts, extra

loop.forward_loss = poisoned
cfg = load_train_config("tiny", {"max_steps": 10, "checkpoint_every": 3, "optim": {"warmup_steps": 4}})
try:
    loop.train(cfg, [read_shard_set(sys.argv[1], "inpainting")], [], sys.argv[2])
    result = "finished"
except loop.TrainingDiverged as e:
    result = str(e)
with open(os.path.join(sys.argv[2], f"rank{rank}.txt"), "w") as f:
    f.write(result)
"""


@pytest.mark.slow
def test_two_processes_warm_up_and_stop_together(sets, tmp_path):
    """Two CPU processes (torch.distributed, gloo): the LR warm-up lasts warmup_steps optimizer steps,
    and a NaN loss on one rank stops both ranks with TrainingDiverged (no rank left waiting)."""
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), sets["inpainting"], str(run)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=str(tmp_path))
    results = {r: (run / f"rank{r}.txt").read_text() if (run / f"rank{r}.txt").exists() else proc.stderr[-3000:]
               for r in (0, 1)}
    for r in (0, 1):
        assert results[r].startswith("loss is nan on rank 1 at step 7"), results[r]
        assert "checkpoint-6" in results[r]
    lrs = [json.loads(line)["lr"] for line in open(run / "logs" / "losses.jsonl")]
    lr = load_train_config("tiny").optim.learning_rate
    assert lrs == pytest.approx([lr * k / 4 for k in (1, 2, 3)] + [lr] * 3)
