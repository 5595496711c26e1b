"""The SmartBrush training loop on accelerate: one process, several GPUs or several nodes alike."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time

import torch

from smartbrush.model.inputs import encode_latents, unet_input
from smartbrush.model.unet import smartbrush_unet_from_pretrained, split_output
from smartbrush.schemas import training_run
from smartbrush.train.config import TrainConfig, to_yaml
from smartbrush.train.objective import drop_text, mask_to_latent, masked_noising, smartbrush_loss
from smartbrush.train.stream import BatchStream, ShardSet, check_shard_sets, to_model_inputs

log = logging.getLogger("smartbrush.train")
TIMESTEP_BUCKETS = 4


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _checkpoints(out_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(out_dir):
        return []
    found = []
    for name in os.listdir(out_dir):
        if name.startswith(training_run.CHECKPOINT_PREFIX) and name[len(training_run.CHECKPOINT_PREFIX):].isdigit():
            found.append((int(name[len(training_run.CHECKPOINT_PREFIX):]), os.path.join(out_dir, name)))
    return sorted(found)


def resolve_base(cfg: TrainConfig, out_dir: str) -> str:
    """The base model folder or id; `tiny` builds the tiny random SD into RUN/base once."""
    if cfg.model.base == "tiny":
        from smartbrush.model.tiny import build_tiny_sd

        base = os.path.join(out_dir, "base")
        if not os.path.isfile(os.path.join(base, "model_index.json")):
            build_tiny_sd(base, seed=cfg.seed)
        return base
    if not cfg.model.base:
        raise SystemExit("model.base is empty: set it to a Stable Diffusion v1.x diffusers folder (or hub id)")
    return cfg.model.base


class Components:
    """Frozen VAE and text encoder, tokenizer, noise scheduler and the trainable SmartBrush UNet."""

    def __init__(self, base: str, num_levels: int):
        from diffusers import AutoencoderKL, DDPMScheduler
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = smartbrush_unet_from_pretrained(base, num_levels)  # checks the folder first
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae").requires_grad_(False).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").requires_grad_(False).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        self.scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
        self.base = base


def forward_loss(c: Components, unet, batch: dict, cfg: TrainConfig, generator: torch.Generator, device) -> tuple:
    """(loss, parts, extras) of one micro-batch; every random draw comes from `generator`. The UNet input
    is built by model/inputs.py, as the sampler builds it: latents are the VAE posterior's mode (so the
    background outside the mask is exactly what sampling preserves), the mask is max-pooled to latent
    size, and noise is added only inside it."""
    image, mask, exact = to_model_inputs(batch, device)
    prompts = drop_text(batch["text"], cfg.data.text_dropout, generator)
    ids = c.tokenizer(prompts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        text = c.text_encoder(ids)[0]
        latents = encode_latents(c.vae, image)
        masked = encode_latents(c.vae, image * (mask < 0.5))
    size = latents.shape[-2:]
    m, m_exact = mask_to_latent(mask, size), mask_to_latent(exact, size)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    t = torch.randint(0, c.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    x_t = masked_noising(latents, noise, m, t, c.scheduler)
    x = unet_input(x_t, m, masked, latents)
    out = unet(x, t, text, class_labels=batch["level"].to(device)).sample
    noise_pred, logit = split_output(out)
    target = noise if c.scheduler.config.prediction_type == "epsilon" else c.scheduler.get_velocity(latents, noise, t)
    loss, parts = smartbrush_loss(noise_pred.float(), target.float(), m, logit.float(), m_exact,
                                  batch["is_inpainting"].to(device), cfg.dice_weight)
    return loss, parts, {"logit": logit.detach(), "latent_mask": m, "exact": m_exact, "t": t}


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of two boolean masks [B, 1, h, w]; 1 where both are empty."""
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _generator(seed: int, rank: int, batch_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, rank, batch_index)) % (2 ** 63))


def validate(c: Components, unet, stream: BatchStream, batches: int, cfg: TrainConfig, device) -> dict:
    """Loss and the mask head's IoU with the exact mask per precision level and timestep bucket, beside
    the IoU of the input mask itself (the baseline the head must beat), on held-out shards."""
    unet.eval()
    rows, losses = [], []
    with torch.no_grad():
        for j in range(batches):
            batch = stream.batch(j)
            loss, _, x = forward_loss(c, unet, batch, cfg, _generator(cfg.seed, -1, j), device)
            losses.append(loss.item())
            head = iou(torch.sigmoid(x["logit"]) > 0.5, x["exact"] > 0.5)
            given = iou(x["latent_mask"] > 0.5, x["exact"] > 0.5)
            bucket = (x["t"] * TIMESTEP_BUCKETS // c.scheduler.config.num_train_timesteps).tolist()
            for k in range(len(head)):
                if batch["is_inpainting"][k]:
                    rows.append((int(batch["level"][k]), bucket[k], head[k].item(), given[k].item()))
    unet.train()
    out = {"loss": sum(losses) / max(len(losses), 1), "by_level": {}, "by_timestep_bucket": {}}
    for key, index in (("by_level", 0), ("by_timestep_bucket", 1)):
        for value in sorted({r[index] for r in rows}):
            sel = [r for r in rows if r[index] == value]
            out[key][str(value)] = {"samples": len(sel), "head_iou": sum(r[2] for r in sel) / len(sel),
                                    "input_mask_iou": sum(r[3] for r in sel) / len(sel)}
    return out


def _append_jsonl(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def _truncate_losses(path: str, step: int) -> None:
    """Drop the lines after `step` (written after the checkpoint a resumed run starts from)."""
    if os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(kept)


def plot_losses(path: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], label="loss", lw=1)
        ax.plot(steps, [r["mse"] for r in rows], label="masked noise MSE", lw=1, alpha=0.7)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.set_title("SmartBrush training loss")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, inpainting: list[ShardSet], text_to_image: list[ShardSet], out_dir: str,
          validation: list[ShardSet] = (), validate_every: int = 0, validation_batches: int = 4) -> dict:
    """Train (or resume) into out_dir; returns {"step", "final", "last_loss"}."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    num_levels = check_shard_sets(inpainting, text_to_image, cfg.model.num_levels or None)
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
        log_with="tensorboard", dataloader_config=DataLoaderConfiguration(split_batches=False),
        project_config=ProjectConfiguration(project_dir=out_dir, logging_dir=os.path.join(out_dir, "logs")))
    cfg = dataclasses.replace(cfg, gradient_accumulation_steps=accumulation_steps(cfg, accelerator.num_processes))
    accelerator.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    set_seed(cfg.seed)
    base = resolve_base(cfg, out_dir)
    c = Components(base, num_levels)
    device = accelerator.device
    c.vae.to(device)
    c.text_encoder.to(device)
    unet = c.unet
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay) if cfg.use_ema else None
    o = cfg.optim
    optimizer = torch.optim.AdamW(unet.parameters(), lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                                  weight_decay=o.weight_decay, eps=o.adam_epsilon)
    # The prepared scheduler steps once per process per optimizer step (accelerate's AcceleratedScheduler),
    # so the warm-up is counted in process-steps, as diffusers' training scripts count it.
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer,
                                 num_warmup_steps=o.warmup_steps * accelerator.num_processes)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)

    step = 0
    losses_path = os.path.join(out_dir, training_run.LOSSES_FILE)
    found = _checkpoints(out_dir)
    if found:
        step, path = found[-1]
        load_checkpoint(accelerator, path, ema, device)
        _truncate_losses(losses_path, step)
        log.info("train: resumed from %s", path)
    if accelerator.is_main_process:
        with open(os.path.join(out_dir, training_run.CONFIG_FILE), "w") as f:
            f.write(to_yaml(cfg))
        with open(os.path.join(out_dir, training_run.LINEAGE_FILE), "w") as f:
            json.dump(training_run.lineage([s.lineage() for s in [*inpainting, *text_to_image]]), f, indent=1)
        accelerator.init_trackers("smartbrush", config={k: v for k, v in _flat(cfg.to_dict()).items()})

    rank, world = accelerator.process_index, accelerator.num_processes
    d = cfg.data
    stream = BatchStream(inpainting, text_to_image, batch_size=d.batch_size, resolution=d.resolution,
                         num_levels=num_levels, seed=cfg.seed, p_inpainting=d.p_inpainting, p_label=d.p_label,
                         level=None if d.level < 0 else d.level, shards_per_batch=d.shards_per_batch,
                         rank=rank, world=world, start_batch=step * cfg.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=d.num_workers,
                                         persistent_workers=d.num_workers > 0)
    val_stream = None
    if validation:
        val_stream = BatchStream(validation, [], batch_size=d.batch_size, resolution=d.resolution,
                                 num_levels=num_levels, seed=cfg.seed + 1, p_label=d.p_label, rank=0, world=1)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    last_loss, window, skipped, skipped_shards = float("nan"), [], 0, 0
    started, samples = time.monotonic(), 0
    for batch in loader:
        if step >= cfg.max_steps:
            break
        skipped += batch["skipped"]
        skipped_shards += batch.get("skipped_shards", 0)
        with accelerator.accumulate(unet):
            g = _generator(cfg.seed, rank, batch["batch_index"])
            loss, parts, _ = forward_loss(c, unet, batch, cfg, g, device)
            check_finite(accelerator, loss, step + 1, batch["batch_index"], out_dir)
            accelerator.backward(loss)
            if accelerator.sync_gradients and o.max_grad_norm > 0:
                accelerator.clip_grad_norm_(unet.parameters(), o.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        window.append({k: v.item() for k, v in {"loss": loss, **parts}.items()})
        samples += len(batch["key"]) * world
        if not accelerator.sync_gradients:
            continue
        step += 1
        if ema is not None:
            ema.step(unet.parameters())
        row = {"step": step, **{k: sum(w[k] for w in window) / len(window) for k in window[0]},
               "lr": lr_scheduler.get_last_lr()[0], "skipped_samples": skipped,
               "skipped_shards": skipped_shards}
        window, last_loss = [], row["loss"]
        if accelerator.is_main_process:
            _append_jsonl(losses_path, row)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                rate = samples / max(time.monotonic() - started, 1e-9)
                accelerator.log({**{k: v for k, v in row.items() if k != "step"}, "samples_per_s": rate}, step=step)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        bar.update(1)
        if val_stream is not None and validate_every and step % validate_every == 0 and accelerator.is_main_process:
            v = validate(c, unet, val_stream, validation_batches, cfg, device)
            _append_jsonl(os.path.join(out_dir, "logs", "validation.jsonl"), {"step": step, **v})
            accelerator.log({"val/loss": v["loss"]}, step=step)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            save_checkpoint(accelerator, out_dir, step, cfg.checkpoints_total_limit)
    bar.close()
    accelerator.wait_for_everyone()
    final = os.path.join(out_dir, training_run.FINAL_DIR)
    if accelerator.is_main_process:
        save_final(accelerator.unwrap_model(unet), ema, c, final)
        plot_losses(losses_path, os.path.join(out_dir, "loss.png"))
    accelerator.end_training()
    return {"step": step, "final": final, "last_loss": last_loss}


def accumulation_steps(cfg: TrainConfig, num_processes: int) -> int:
    """Micro-steps per optimizer step: `gradient_accumulation_steps`, or, when `global_batch_size` is set,
    global_batch_size / (data.batch_size x num_processes), which must be a whole number."""
    if not cfg.global_batch_size:
        return cfg.gradient_accumulation_steps
    per_micro_step = cfg.data.batch_size * num_processes
    if cfg.global_batch_size % per_micro_step:
        raise ValueError(f"global_batch_size {cfg.global_batch_size} is not a multiple of data.batch_size "
                         f"{cfg.data.batch_size} x {num_processes} processes")
    return cfg.global_batch_size // per_micro_step


def check_finite(accelerator, loss: torch.Tensor, step: int, batch_index: int, out_dir: str) -> None:
    """Raise TrainingDiverged on every rank when the loss of any rank is NaN or infinite: one rank
    stopping alone would leave the others waiting in the gradient all-reduce until the NCCL timeout."""
    losses = accelerator.gather(loss.detach().float().reshape(1))
    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
    if bad:
        last = _checkpoints(out_dir)
        where = f" on rank {bad[0]}" if accelerator.num_processes > 1 else ""
        raise TrainingDiverged(f"loss is {losses[bad[0]].item()}{where} at step {step} (batch {batch_index}); "
                               f"stopped. Last good checkpoint: {last[-1][1] if last else 'none'}")


def load_checkpoint(accelerator, path: str, ema, device) -> None:
    """accelerate's load_state, then the EMA weights onto `device`: accelerate loads registered objects
    on the CPU, and an EMA step mixing CPU and GPU tensors fails."""
    accelerator.load_state(path)
    if ema is not None:
        ema.to(device)


def save_checkpoint(accelerator, out_dir: str, step: int, limit: int) -> None:
    path = os.path.join(out_dir, f"{training_run.CHECKPOINT_PREFIX}{step}")
    accelerator.save_state(path)
    if accelerator.is_main_process and limit > 0:
        for _, old in _checkpoints(out_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def save_final(unet, ema, c: Components, final: str) -> None:
    """RUN/final: a saved SmartBrushPipeline (model_index.json and diffusers folders that plain
    from_pretrained loads; EMA weights when EMA is on). Its scheduler config is corrected as diffusers' SD
    pipelines correct old ones (`clip_sample` false, `steps_offset` 1)."""
    from smartbrush.model.sampling_pipeline import SmartBrushPipeline

    if ema is not None:
        ema.copy_to(unet.parameters())
    scheduler = type(c.scheduler).from_config(c.scheduler.config)  # the training scheduler stays as it is
    pipe = SmartBrushPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=unet,
                              scheduler=scheduler)
    pipe.save_pretrained(final)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


