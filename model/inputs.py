"""The SmartBrush UNet's conditioning, built by the same functions in training (train/objective.py,
train/loop.py) and in sampling (model/sampling_pipeline.py), so the sampler feeds the UNet what it was
trained on.

- `mask_to_latent`: a pixel mask to latent resolution by max pooling: a latent cell is in the mask when
  any of its pixels is, so the latent mask covers every painted pixel (nearest interpolation would drop
  strokes thinner than a latent cell or off its grid).
- `encode_latents`: the VAE posterior's mode, scaled. The mode, not a sample: the background the UNet
  sees outside the mask must be the one it is asked to preserve at sampling, and a posterior sample
  adds noise of the posterior's std to it (about 1 for a random VAE, small but not zero for SD's).
- `unet_input`: `[noisy latents inside the mask, clean image latents outside | mask | masked-image
  latents]`: the paper's forward process adds noise only inside the mask, so outside it the UNet always
  sees the clean latents (at sampling, after the scheduler's `scale_model_input`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_to_latent(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask [B, 1, H, W] in {0, 1} to latent resolution [B, 1, h, w] by max pooling."""
    pooled = F.adaptive_max_pool2d(mask.float(), tuple(latent_size))
    return pooled.to(mask.dtype) if mask.is_floating_point() else pooled


def encode_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Scaled latents of images `x` in [-1, 1]: the posterior's mode, shifted and scaled as the VAE's
    config says (SD v1: no shift, scaling 0.18215)."""
    latents = vae.encode(x.to(vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in about [-1, 1] from latents scaled as `encode_latents` scales them."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]


def unet_input(noisy: torch.Tensor, mask: torch.Tensor, masked_image_latents: torch.Tensor,
               image_latents: torch.Tensor) -> torch.Tensor:
    """The 9-channel UNet input: `noisy` inside `mask` and `image_latents` outside it, the mask, the
    masked-image latents. `mask` is at latent resolution, [B, 1, h, w] in {0, 1}."""
    inside = mask > 0.5
    latents = torch.where(inside, noisy, image_latents.to(noisy.dtype))
    return torch.cat([latents, mask.to(noisy.dtype), masked_image_latents.to(noisy.dtype)], dim=1)
