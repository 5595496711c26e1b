"""The SmartBrush training objective (Xie et al., CVPR 2023, Sec. 3): noise only inside the mask, the
noise loss inside the mask, and a DICE loss on the predicted object mask."""

from __future__ import annotations

import torch

from smartbrush.model.inputs import mask_to_latent  # noqa: F401  (the one pixel-to-latent mask rule)

DICE_WEIGHT = 0.01


def masked_noising(x0: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, timesteps: torch.Tensor,
                   scheduler) -> torch.Tensor:
    """x_t = m * add_noise(x0, noise, t) + (1 - m) * x0: latents outside the mask stay exactly x0.
    `mask` is the precision-level mask at latent resolution, [B, 1, h, w] in {0, 1}."""
    noised = scheduler.add_noise(x0, noise, timesteps)
    return torch.where(mask > 0.5, noised, x0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error inside the mask (normalised by mask area x channels); [B]."""
    m = mask.expand_as(pred).to(pred.dtype)
    area = m.flatten(1).sum(1).clamp_min(1.0)
    return ((pred - target) ** 2 * m).flatten(1).sum(1) / area


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-sample soft DICE loss 1 - (2 |P.T| + eps) / (|P| + |T| + eps) with P = sigmoid(logits); [B]."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.to(p.dtype).flatten(1)
    return 1.0 - (2.0 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def smartbrush_loss(noise_pred: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, mask_logit: torch.Tensor,
                    exact_mask: torch.Tensor, is_inpainting: torch.Tensor,
                    dice_weight: float = DICE_WEIGHT) -> tuple[torch.Tensor, dict]:
    """Batch loss and its parts: masked noise MSE + dice_weight x DICE(mask logit, exact s = 0 mask),
    the DICE term only for inpainting samples (text-to-image samples have no object)."""
    mse = masked_mse(noise_pred, noise, mask)
    dice = dice_loss(mask_logit, exact_mask)
    inpaint = is_inpainting.to(dice.dtype)
    dice_term = (dice * inpaint).sum() / inpaint.sum().clamp_min(1.0)
    loss = mse.mean() + dice_weight * dice_term
    return loss, {"mse": mse.mean().detach(), "dice": dice_term.detach()}


def drop_text(prompts: list[str], p_drop: float, generator: torch.Generator) -> list[str]:
    """Replace each prompt by "" with probability p_drop (classifier-free guidance training)."""
    draws = torch.rand(len(prompts), generator=generator)
    return ["" if d < p_drop else text for d, text in zip(draws.tolist(), prompts)]
