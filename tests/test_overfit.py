"""The mask head learns: trained on a handful of real objects, it beats the box it is given.

The embedded sample (`smartbrush demo`'s 24 objects from 4 COCO and 3 OpenImages images) is trained on
with the tiny preset at 64 px, at s = S (where the given mask is the object's box: the level the check
is about, so that every step trains it), and validated on the same objects at s = S: the head's IoU
with the exact object mask must exceed the box's own IoU with it, i.e. the head does better than
copying its input. The DICE weight is raised from the paper's 0.01 to 1.0 so
that this happens within a CPU budget (only the shared layers feel the weight: the head's own output
channel sees nothing but the DICE gradient, and AdamW is invariant to its scale).
"""

import pytest
import torch

from smartbrush.pipeline.commands.build import run_build
from smartbrush.pipeline.commands.demo import sample_build_args
from smartbrush.train.config import load_train_config
from smartbrush.train.stream import BatchStream, read_shard_set

STEPS = 400
DICE_WEIGHT = 1.0  # the paper's 0.01 does not get there in a CPU budget; see the module docstring


@pytest.mark.slow
def test_mask_head_beats_the_box_it_is_given(tmp_path):
    from smartbrush.train import loop

    shards = str(tmp_path / "demo")
    run_build(sample_build_args(shards, str(tmp_path / "demo-in")) + ["--config", "small"])
    sset = read_shard_set(shards, "inpainting")
    levels = sset.num_levels
    cfg = load_train_config("tiny", {"max_steps": STEPS, "dice_weight": DICE_WEIGHT, "checkpoint_every": STEPS,
                                     "log_every": 50, "optim": {"learning_rate": 1e-3},
                                     "data": {"batch_size": 8, "resolution": 64, "level": levels - 1}})
    torch.manual_seed(0)
    result = loop.train(cfg, [sset], [], str(tmp_path / "run"))
    assert result["step"] == STEPS

    c = loop.Components(result["final"], levels)
    stream = BatchStream([sset], [], batch_size=8, resolution=64, num_levels=levels, seed=1, level=levels - 1)
    v = loop.validate(c, c.unet, stream, 6, cfg, "cpu")["by_level"][str(levels - 1)]
    assert v["samples"] == 48
    print(f"s = S: head IoU {v['head_iou']:.3f}, box IoU {v['input_mask_iou']:.3f}")
    assert v["head_iou"] > v["input_mask_iou"] + 0.02
