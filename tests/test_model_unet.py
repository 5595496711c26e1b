"""The SmartBrush UNet: widened from a base SD UNet, identical to it at init, saved as a plain UNet."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from smartbrush.model.tiny import build_tiny_sd, build_tiny_sd_inpaint
from smartbrush.model.unet import (IN_CHANNELS, OUT_CHANNELS, BaseModelError, smartbrush_unet_from_pretrained,
                                   split_output)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return build_tiny_sd(str(root / "sd")), build_tiny_sd_inpaint(str(root / "sd-inpaint"))


def _inputs(seed=0, batch=2, size=16):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, size, size, generator=g)
    extra = torch.randn(batch, 5, size, size, generator=g)
    text = torch.randn(batch, 77, 32, generator=g)
    t = torch.tensor([10, 700])
    return latents, extra, text, t


def test_widened_unet_reproduces_the_base_at_init(bases):
    base = UNet2DConditionModel.from_pretrained(bases[0], subfolder="unet").eval()
    unet = smartbrush_unet_from_pretrained(bases[0], num_levels=5).eval()
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.num_class_embeds) == (9, 5, 5)
    latents, extra, text, t = _inputs()
    with torch.no_grad():
        ref = base(latents, t, text).sample
        for seed, level in ((1, 0), (2, 4)):  # whatever the mask, masked latent and level
            extra = torch.randn(extra.shape, generator=torch.Generator().manual_seed(seed))
            out = unet(torch.cat([latents, extra], 1), t, text, class_labels=torch.tensor([level, 1])).sample
            noise, logit = split_output(out)
            torch.testing.assert_close(noise, ref, rtol=0, atol=0)
            assert torch.equal(logit, torch.zeros_like(logit))
    # the conv_in bias was copied, the new weights are zero
    assert torch.equal(unet.conv_in.bias, base.conv_in.bias)
    assert torch.equal(unet.conv_in.weight[:, 4:], torch.zeros_like(unet.conv_in.weight[:, 4:]))
    assert torch.equal(unet.class_embedding.weight, torch.zeros_like(unet.class_embedding.weight))


def test_saved_unet_loads_with_plain_from_pretrained(bases, tmp_path):
    unet = smartbrush_unet_from_pretrained(bases[0], num_levels=3).eval()
    with torch.no_grad():
        for p in unet.parameters():  # trained weights: no longer zero
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() % 97)))
    unet.save_pretrained(tmp_path / "unet")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    assert (again.config.in_channels, again.config.out_channels, again.config.num_class_embeds) == (9, 5, 3)
    latents, extra, text, t = _inputs()
    x = torch.cat([latents, extra], 1)
    with torch.no_grad():
        a = unet(x, t, text, class_labels=torch.tensor([2, 0])).sample
        b = again(x, t, text, class_labels=torch.tensor([2, 0])).sample
    assert torch.equal(a, b)
    # and it reloads as the SmartBrush UNet it is, but not with another number of levels
    assert smartbrush_unet_from_pretrained(str(tmp_path), 3).config.num_class_embeds == 3
    with pytest.raises(BaseModelError, match="3 levels, this run has 5"):
        smartbrush_unet_from_pretrained(str(tmp_path), 5)


def test_nine_channel_inpainting_base_keeps_its_input_weights(bases):
    base = UNet2DConditionModel.from_pretrained(bases[1], subfolder="unet").eval()
    unet = smartbrush_unet_from_pretrained(bases[1], num_levels=5).eval()
    assert torch.equal(unet.conv_in.weight, base.conv_in.weight)
    assert unet.config.in_channels == IN_CHANNELS and unet.config.out_channels == OUT_CHANNELS
    latents, extra, text, t = _inputs()
    x = torch.cat([latents, extra], 1)
    with torch.no_grad():
        torch.testing.assert_close(split_output(unet(x, t, text, class_labels=torch.tensor([0, 4])).sample)[0],
                                   base(x, t, text).sample, rtol=0, atol=0)


def test_bad_bases_fail_before_loading(tmp_path):
    with pytest.raises(BaseModelError, match="no such model folder"):
        smartbrush_unet_from_pretrained(str(tmp_path / "missing"), 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="not a diffusers model folder"):
        smartbrush_unet_from_pretrained(str(tmp_path / "empty"), 5)
