"""A training run's folder (`smartbrush train --out RUN`).

RUN/final/{unet,vae,text_encoder,tokenizer,scheduler}/   diffusers folders (plain from_pretrained)
RUN/checkpoint-<step>/                                   accelerate state: resumes exactly
RUN/training_config.yaml                                 the resolved training config
RUN/lineage.json                                         every shard set read, by manifest sha256
RUN/logs/losses.jsonl                                    one line per optimizer step
RUN/loss.png, RUN/logs/tensorboard/                      curves
"""

from __future__ import annotations

LINEAGE_NAME = "smartbrush.lineage"
LINEAGE_VERSION = 1
LINEAGE_FILE = "lineage.json"
CONFIG_FILE = "training_config.yaml"
FINAL_DIR = "final"
CHECKPOINT_PREFIX = "checkpoint-"
LOSSES_FILE = "logs/losses.jsonl"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def lineage(shard_sets: list[dict]) -> dict:
    """lineage.json: {"schema", "schema_version", "shard_sets": [{"path", "kind", "manifest_sha256"}]}."""
    return {"schema": LINEAGE_NAME, "schema_version": LINEAGE_VERSION, "shard_sets": shard_sets}
