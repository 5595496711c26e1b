"""The training objective on hand-made tensors with known values."""

import pytest
import torch
from diffusers import DDPMScheduler

from smartbrush.train.objective import (dice_loss, drop_text, mask_to_latent, masked_mse, masked_noising,
                                        smartbrush_loss)


def test_dice_on_known_masks():
    big = 50.0  # sigmoid(big) == 1, sigmoid(-big) == 0 in float32
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1  # 8 pixels
    perfect = torch.where(target > 0, big, -big)
    assert dice_loss(perfect, target, eps=0.0).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.full((1, 1, 4, 4), -big)
    half[..., 0, :] = big  # 4 predicted, all inside: 1 - 2*4 / (4 + 8)
    assert dice_loss(half, target, eps=0.0).item() == pytest.approx(1 - 8 / 12, abs=1e-6)
    assert dice_loss(-perfect, target, eps=0.0).item() == pytest.approx(1.0, abs=1e-6)


def test_masked_noising_leaves_latents_outside_the_mask_unchanged():
    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:7] = 1
    t = torch.tensor([999, 500])
    xt = masked_noising(x0, noise, mask, t, sched)
    outside = (mask == 0).expand_as(x0)
    assert torch.equal(xt[outside], x0[outside])
    assert torch.equal(xt[~outside], sched.add_noise(x0, noise, t)[~outside])


def test_loss_ignores_the_noise_prediction_outside_the_mask():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    pred = noise.clone()
    pred[:, :, 4:] += 100.0  # wrong only outside the mask
    assert torch.equal(masked_mse(pred, noise, mask), torch.zeros(2))
    pred[:, :, :4] += 1.0  # off by exactly 1 inside: MSE 1
    torch.testing.assert_close(masked_mse(pred, noise, mask), torch.ones(2))


def test_dice_only_for_inpainting_samples():
    noise = torch.zeros(2, 4, 4, 4)
    mask = torch.ones(2, 1, 4, 4)
    logit = torch.full((2, 1, 4, 4), -50.0)
    exact = torch.ones(2, 1, 4, 4)
    loss, parts = smartbrush_loss(noise, noise, mask, logit, exact, torch.tensor([True, False]), dice_weight=0.01)
    dice_one = dice_loss(logit[:1], exact[:1]).item()
    assert parts["dice"].item() == pytest.approx(dice_one) and loss.item() == pytest.approx(0.01 * dice_one)
    loss, parts = smartbrush_loss(noise, noise, mask, logit, exact, torch.tensor([False, False]))
    assert loss.item() == 0.0 and parts["dice"].item() == 0.0


def test_text_dropout_and_latent_mask():
    g = torch.Generator().manual_seed(0)
    out = drop_text(["a"] * 2000, 0.1, g)
    assert 150 < out.count("") < 250
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 3, 5] = 1
    lat = mask_to_latent(m, (4, 4))
    assert lat.sum().item() == 1 and lat[0, 0, 1, 2].item() == 1  # covers the pixel mask


def test_unet_input_is_clean_outside_the_mask():
    from smartbrush.model.inputs import unet_input

    g = torch.Generator().manual_seed(2)
    noisy, clean, masked = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 1:3, 2:7] = 1
    x = unet_input(noisy, mask, masked, clean)
    inside = (mask > 0).expand_as(noisy)
    assert x.shape == (2, 9, 8, 8)
    assert torch.equal(x[:, :4][inside], noisy[inside]) and torch.equal(x[:, :4][~inside], clean[~inside])
    assert torch.equal(x[:, 4:5], mask) and torch.equal(x[:, 5:], masked)
