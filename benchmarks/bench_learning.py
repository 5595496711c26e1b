"""Held-out learning curve of the mask head on CPU: does it beat the mask it is given?

Splits coco_val2017_tiny (80 COCO val images) into 64 training and 16 held-out images, builds a
64 px inpainting shard set from each (`small` build config, label captions), trains the tiny preset
(model/tiny.py) on the first and validates on the second every `--validate-every` steps: the mask
head's IoU with the exact object mask, per precision level and per timestep quarter, beside the IoU of
the input mask itself (what copying its input would score). Prints the table, the first validation
where the head beats the input mask at each level, and plots both (learning.png).

    python benchmarks/bench_learning.py --out /tmp/learning [--coco ../shared/data/coco_val2017_tiny]
        [--max-steps 2000 --validate-every 100 --dice-weight 1.0 --learning-rate 5e-4 --batch-size 8]

The paper's DICE weight is 0.01; `--dice-weight 1.0` (the default here) makes the head learn within
a CPU budget. Only the head's output channel sees nothing but the DICE gradient, and AdamW is
invariant to its scale; the weight matters for the shared layers, which the noise loss dominates at
0.01.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_COCO = os.path.join(HERE, "..", "..", "shared", "data", "coco_val2017_tiny")


def split_coco(coco: str, work: str, n_train: int) -> tuple[str, str]:
    """Two instances JSONs: the first n_train images (by id) and the rest."""
    with open(os.path.join(coco, "annotations", "instances_val2017.json")) as f:
        data = json.load(f)
    ids = sorted(im["id"] for im in data["images"])
    out = []
    for name, keep in (("train", set(ids[:n_train])), ("heldout", set(ids[n_train:]))):
        part = {**data, "images": [im for im in data["images"] if im["id"] in keep],
                "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
        path = os.path.join(work, f"instances_{name}.json")
        with open(path, "w") as f:
            json.dump(part, f)
        out.append(path)
    return out[0], out[1]


def build(annotations: str, images: str, out: str, resolution: int) -> str:
    from smartbrush.pipeline.commands.build import run_build

    if not os.path.isfile(os.path.join(out, "manifest.json")):
        run_build(["--coco-annotations", annotations, "--coco-images", images, "--coco-split", "val2017",
                   "--config", "small", "--resolution", str(resolution), "--out", out])
    return out


def plot(rows: list[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [r["step"] for r in rows]
    for ax, key, title in ((axes[0], "by_level", "precision level s"), (axes[1], "by_timestep_bucket",
                                                                       "timestep quarter")):
        keys = sorted({k for r in rows for k in r[key]}, key=int)
        for i, k in enumerate(keys):
            color = f"C{i}"
            ax.plot(steps, [r[key].get(k, {}).get("head_iou", float("nan")) for r in rows], color=color,
                    label=f"{k}: head")
            ax.plot(steps, [r[key].get(k, {}).get("input_mask_iou", float("nan")) for r in rows], color=color,
                    ls="--", lw=1, label=f"{k}: input mask")
        ax.set_xlabel("step")
        ax.set_ylabel("IoU with the exact mask (held out)")
        ax.set_title(f"mask head vs input mask, by {title}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--coco", default=DEFAULT_COCO)
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--validation-batches", type=int, default=16)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from smartbrush.train.config import load_train_config
    from smartbrush.train.loop import train
    from smartbrush.train.stream import read_shard_set

    os.makedirs(a.out, exist_ok=True)
    train_json, heldout_json = split_coco(a.coco, a.out, a.train_images)
    images = os.path.join(a.coco, "val2017")
    t0 = time.perf_counter()
    train_set = build(train_json, images, os.path.join(a.out, "shards-train"), a.resolution)
    heldout_set = build(heldout_json, images, os.path.join(a.out, "shards-heldout"), a.resolution)
    inp, val = read_shard_set(train_set, "inpainting"), read_shard_set(heldout_set, "inpainting")
    print(f"shard sets: {sum(s['nsamples'] for s in inp.shards)} training objects from {a.train_images} images, "
          f"{sum(s['nsamples'] for s in val.shards)} held-out objects; built in {time.perf_counter() - t0:.0f} s",
          flush=True)
    cfg = load_train_config("tiny", {"max_steps": a.max_steps, "dice_weight": a.dice_weight, "seed": a.seed,
                                     "checkpoint_every": a.max_steps, "log_every": 50,
                                     "optim": {"learning_rate": a.learning_rate},
                                     "data": {"batch_size": a.batch_size, "resolution": a.resolution}})
    run = os.path.join(a.out, "run")
    t0 = time.perf_counter()
    train(cfg, [inp], [], run, [val], a.validate_every, a.validation_batches)
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in open(os.path.join(run, "logs", "validation.jsonl"))]

    levels = sorted({k for r in rows for k in r["by_level"]}, key=int)
    buckets = sorted({k for r in rows for k in r["by_timestep_bucket"]}, key=int)
    print(f"\ntrained {a.max_steps} steps in {seconds:.0f} s ({seconds / a.max_steps:.2f} s/step, batch "
          f"{a.batch_size} at {a.resolution} px, DICE weight {a.dice_weight}, lr {a.learning_rate}); "
          f"held-out validation every {a.validate_every} steps ({a.validation_batches} batches)")
    print("head IoU / input-mask IoU with the exact mask")
    print("step  " + "  ".join(f"s={k:<10}" for k in levels) + "  " + "  ".join(f"t-q{k:<9}" for k in buckets))
    for r in rows:
        cells = [f"{r['by_level'][k]['head_iou']:.2f}/{r['by_level'][k]['input_mask_iou']:.2f}  "
                 if k in r["by_level"] else " " * 11 for k in levels]
        cells += [f"{r['by_timestep_bucket'][k]['head_iou']:.2f}/{r['by_timestep_bucket'][k]['input_mask_iou']:.2f}  "
                  if k in r["by_timestep_bucket"] else " " * 11 for k in buckets]
        print(f"{r['step']:<5} " + " ".join(cells))
    print()
    for k in levels:
        crossed = [r["step"] for r in rows if k in r["by_level"]
                   and r["by_level"][k]["head_iou"] > r["by_level"][k]["input_mask_iou"]]
        last = rows[-1]["by_level"].get(k, {})
        print(f"s={k}: head beats the input mask first at step {crossed[0] if crossed else 'never'}; "
              f"{len(crossed)} of {len(rows)} validations; last: head {last.get('head_iou', float('nan')):.3f} "
              f"vs input {last.get('input_mask_iou', float('nan')):.3f} ({last.get('samples', 0)} samples)")
    png = os.path.join(a.out, "learning.png")
    plot(rows, png)
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
