"""The SmartBrush UNet: a Stable Diffusion v1.x UNet widened for inpainting with precision control.

Input channels, in the order diffusers' StableDiffusionInpaintPipeline concatenates them: the noisy
latent (4), the mask at the precision level (1), the masked-image latent (4). Output channels: the
noise prediction (4) and the object-mask logit (1). The precision level s is a class embedding
(`num_class_embeds = S + 1`, passed as `class_labels`) added to the timestep embedding. Every new
weight starts at zero, so at step 0 the noise prediction is the base model's, whatever the new inputs.
`save_pretrained` writes a plain UNet2DConditionModel that `UNet2DConditionModel.from_pretrained` loads.
"""

from __future__ import annotations

import os

import torch
from torch import nn

LATENT_CHANNELS = 4
IN_CHANNELS = 9  # noisy latent 4 | mask 1 | masked-image latent 4
OUT_CHANNELS = 5  # noise 4 | object-mask logit 1
NOISE = slice(0, 4)
MASK_LOGIT = slice(4, 5)


class BaseModelError(ValueError):
    """The base model path is missing or is not a diffusers UNet folder."""


def split_output(sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise prediction [B, 4, h, w], object-mask logit [B, 1, h, w]) of a SmartBrush UNet output."""
    if sample.shape[1] != OUT_CHANNELS:
        raise ValueError(f"a SmartBrush UNet outputs {OUT_CHANNELS} channels, got {sample.shape[1]}")
    return sample[:, NOISE], sample[:, MASK_LOGIT]


def check_base(path_or_id: str, subfolder: str = "unet") -> None:
    """Fail before anything loads when a local base is missing or is not a diffusers UNet folder
    (hub ids pass through to from_pretrained, which fails at once offline)."""
    if os.path.isabs(path_or_id) or path_or_id.startswith(".") or os.path.exists(path_or_id):
        folder = os.path.join(path_or_id, subfolder) if subfolder else path_or_id
        if not os.path.isdir(path_or_id):
            raise BaseModelError(f"{path_or_id}: no such model folder")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise BaseModelError(f"{path_or_id}: not a diffusers model folder (no {subfolder}/config.json)")


def _widen_conv(conv: nn.Conv2d, in_channels: int | None = None, out_channels: int | None = None) -> nn.Conv2d:
    """A copy of `conv` with more input or output channels: old weights and bias copied, new ones zero."""
    new = nn.Conv2d(in_channels or conv.in_channels, out_channels or conv.out_channels, conv.kernel_size,
                    conv.stride, conv.padding, dtype=conv.weight.dtype, device=conv.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:conv.out_channels, :conv.in_channels] = conv.weight
        new.bias.zero_()
        new.bias[:conv.out_channels] = conv.bias
    return new


def to_smartbrush(unet, num_levels: int):
    """Widen a 4- or 9-channel SD UNet in place into a SmartBrush UNet with `num_levels` = S + 1."""
    if num_levels < 2:
        raise ValueError(f"num_levels = S + 1 must be at least 2, got {num_levels}")
    if unet.config.in_channels not in (LATENT_CHANNELS, IN_CHANNELS) or unet.config.out_channels != LATENT_CHANNELS:
        raise BaseModelError(f"base UNet has {unet.config.in_channels} inputs and {unet.config.out_channels} outputs; "
                             f"expected a text-to-image (4 -> 4) or inpainting (9 -> 4) Stable Diffusion UNet")
    if unet.config.in_channels == LATENT_CHANNELS:
        unet.conv_in = _widen_conv(unet.conv_in, in_channels=IN_CHANNELS)
    unet.conv_out = _widen_conv(unet.conv_out, out_channels=OUT_CHANNELS)
    time_dim = unet.time_embedding.linear_1.out_features
    unet.class_embedding = nn.Embedding(num_levels, time_dim, dtype=unet.conv_in.weight.dtype,
                                        device=unet.conv_in.weight.device)
    nn.init.zeros_(unet.class_embedding.weight)
    unet.register_to_config(in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, num_class_embeds=num_levels,
                            class_embed_type=None)
    return unet


def smartbrush_unet_from_pretrained(path_or_id: str, num_levels: int, subfolder: str = "unet", **kwargs):
    """The SmartBrush UNet from a Stable Diffusion v1.x checkpoint (a local folder, or a hub id the user
    passes on purpose): a 4-channel text-to-image UNet or a 9-channel inpainting UNet is widened; a
    SmartBrush UNet (9 -> 5) is loaded as it is and must have `num_levels` levels."""
    from diffusers import UNet2DConditionModel

    check_base(path_or_id, subfolder)
    unet = UNet2DConditionModel.from_pretrained(path_or_id, subfolder=subfolder or None, **kwargs)
    if unet.config.out_channels == OUT_CHANNELS:
        if unet.config.in_channels != IN_CHANNELS or unet.config.num_class_embeds != num_levels:
            raise BaseModelError(f"{path_or_id}: a SmartBrush UNet with {unet.config.num_class_embeds} levels, "
                                 f"this run has {num_levels}")
        return unet
    return to_smartbrush(unet, num_levels)
