"""SmartBrushPipeline and `smartbrush sample` on tiny random models (CPU)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from smartbrush.model.sampling_pipeline import SmartBrushPipeline

SIZE = 32  # pixels; the tiny VAE halves it once (latents 16 x 16)


# ---- tiny components (also used by tests/test_eval.py) ---------------------------------------------

def tiny_tokenizer(folder: str):
    from smartbrush.model.tiny import write_tiny_tokenizer

    return write_tiny_tokenizer(folder)


def tiny_text_encoder(tok, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
                         sample_size=SIZE).eval()


def tiny_unet(in_channels: int = 9, out_channels: int = 5, num_class_embeds: int | None = 2, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=SIZE // 2, in_channels=in_channels, out_channels=out_channels,
                                layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=32, num_class_embeds=num_class_embeds).eval()


def tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def tiny_components(folder: str, levels: int = 2, seed: int = 0) -> dict:
    tok = tiny_tokenizer(os.path.join(folder, "_tokenizer_src"))
    return {"vae": tiny_vae(seed), "text_encoder": tiny_text_encoder(tok, seed), "tokenizer": tok,
            "unet": tiny_unet(9, 5, levels, seed), "scheduler": tiny_scheduler()}


def set_mask_bias(unet, value: float) -> None:
    """Make the mask-logit channel constant: predicted mask everywhere (value > 0) or nowhere (< 0)."""
    with torch.no_grad():
        unet.conv_out.weight[4].zero_()
        unet.conv_out.bias[4] = value


def write_run_folder(run: str, levels: int = 2, seed: int = 0, lineage: dict | None = None) -> str:
    """A training run's folder as the trainer writes it: final/{unet,vae,text_encoder,tokenizer,scheduler}
    (no model_index.json) and lineage.json."""
    parts = tiny_components(run, levels, seed)
    final = os.path.join(run, "final")
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        parts[name].save_pretrained(os.path.join(final, name))
    parts["scheduler"].save_pretrained(os.path.join(final, "scheduler"))
    if lineage is not None:
        with open(os.path.join(run, "lineage.json"), "w") as f:
            json.dump(lineage, f)
    return run


def picture(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 90)], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def box_mask(size: int = SIZE) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[8:24, 6:22] = True
    return m


# ---- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    p = SmartBrushPipeline(**tiny_components(str(tmp_path_factory.mktemp("tiny"))))
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe, seed=0, **kw):
    args = dict(prompt="a red ball", image=Image.fromarray(picture(1)),
                mask_image=Image.fromarray(box_mask().astype(np.uint8) * 255), precision=1, num_inference_steps=4,
                generator=torch.Generator().manual_seed(seed), output_type="np")
    args.update(kw)
    return pipe(**args)


# ---- tests -----------------------------------------------------------------------------------------

def test_output_shapes_for_a_batch(pipe):
    out = run(pipe, prompt=["a red ball", "a cat"], precision=[0, 1], output_type="pil")
    assert [im.size for im in out.images] == [(SIZE, SIZE)] * 2
    assert [m.size for m in out.masks] == [(SIZE, SIZE)] * 2
    out = run(pipe, num_images_per_prompt=3)
    assert out.images.shape == (3, SIZE, SIZE, 3) and out.masks.shape == (3, SIZE, SIZE)
    assert set(np.unique(out.masks)) <= {0.0, 1.0}
    assert not (out.masks.astype(bool) & ~box_mask()).any()  # the predicted mask never leaves the given one


def test_same_generator_same_output(pipe):
    a, b, c = run(pipe, seed=3), run(pipe, seed=3), run(pipe, seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("switch_at", [0.5, None])
def test_pixels_outside_the_given_mask_are_the_input(pipe, switch_at):
    out = run(pipe, switch_at=switch_at, output_type="pil")
    got, given = np.asarray(out.images[0]), box_mask()
    assert np.array_equal(got[~given], picture(1)[~given])
    assert not np.array_equal(got[given], picture(1)[given])  # something was painted inside


def test_switch_to_the_predicted_mask_at_the_configured_step(tmp_path):
    p = SmartBrushPipeline(**tiny_components(str(tmp_path)))
    p.set_progress_bar_config(disable=True)
    set_mask_bias(p.unet, -8.0)  # the model predicts "no object": after the switch nothing is painted
    seen = {}

    def callback(pipe, step, t, kw):
        seen[step] = (kw["blend_mask"].clone(), kw["mask_logits"].clone(), kw["mask"].clone())
        return {}

    out = run(p, num_inference_steps=8, switch_at=0.25, callback_on_step_end=callback,
              callback_on_step_end_tensor_inputs=["blend_mask", "mask_logits", "mask"])
    assert sorted(seen) == list(range(8)) and p.switch_step == 2
    for step, (blend, logits, given) in seen.items():
        assert given.sum() > 0
        if step < 2:
            assert torch.equal(blend, given)
        else:
            assert torch.equal(blend, ((torch.sigmoid(logits) > 0.5).float() * given).to(blend.dtype))
            assert blend.sum() == 0
    # Composited through an empty predicted mask, the whole image is the input.
    assert np.array_equal((out.images[0] * 255).round().astype(np.uint8), picture(1))
    assert out.masks.sum() == 0
    # A model that predicts "object everywhere" blends through the given mask (clipped to it) after the switch.
    set_mask_bias(p.unet, 8.0)
    seen.clear()
    out = run(p, num_inference_steps=8, switch_at=0.25, callback_on_step_end=callback,
              callback_on_step_end_tensor_inputs=["blend_mask", "mask_logits", "mask"])
    assert all(torch.equal(b, g) for b, _, g in seen.values())
    assert np.array_equal(out.masks[0].astype(bool), box_mask())
    # No switch (the ablation): the given mask throughout, whatever the model predicts.
    set_mask_bias(p.unet, -8.0)
    seen.clear()
    run(p, num_inference_steps=8, switch_at=None, callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["blend_mask", "mask_logits", "mask"])
    assert p.switch_step is None
    assert all(torch.equal(b, g) for b, _, g in seen.values())


def test_precision_outside_the_checkpoint_levels_is_an_error(pipe):
    with pytest.raises(ValueError, match="levels 0..1"):
        run(pipe, precision=2)


def test_rejects_a_unet_without_mask_head(tmp_path):
    parts = tiny_components(str(tmp_path))
    parts["unet"] = tiny_unet(9, 4, None)
    with pytest.raises(ValueError, match="9-in / 5-out"):
        SmartBrushPipeline(**parts)


def test_save_and_reload(pipe, tmp_path):
    from diffusers import EulerDiscreteScheduler

    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "SmartBrushPipeline"
    again = SmartBrushPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    a, b = run(pipe, seed=5), run(again, seed=5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    # Any diffusers scheduler drives it.
    again.scheduler = EulerDiscreteScheduler.from_config(again.scheduler.config)
    out = run(again, seed=5)
    assert out.images.shape == (1, SIZE, SIZE, 3) and np.isfinite(out.images).all()


def test_sample_cli_writes_image_mask_and_settings(tmp_path):
    from smartbrush.cli import main

    write_run_folder(str(tmp_path / "run"), levels=3)
    Image.fromarray(picture(2)).save(tmp_path / "in.png")
    Image.fromarray(box_mask().astype(np.uint8) * 255).save(tmp_path / "mask.png")
    base = ["sample", "--checkpoint", str(tmp_path / "run"), "--image", str(tmp_path / "in.png"),
            "--mask", str(tmp_path / "mask.png"), "--prompt", "a red ball", "--steps", "3"]
    assert main(base + ["--precision", "2", "--out", str(tmp_path / "out.png")]) == 0
    got = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(got[~box_mask()], picture(2)[~box_mask()])
    mask = np.asarray(Image.open(tmp_path / "out_mask.png")) > 0
    assert mask.shape == (SIZE, SIZE) and not (mask & ~box_mask()).any()
    settings = yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert settings["precision"] == 2 and settings["sampler"]["steps"] == 3 and settings["sampler"]["scheduler"] == "ddim"
    assert main(base + ["--precision", "3", "--out", str(tmp_path / "bad.png")]) == 2  # the checkpoint knows 0..2
    with pytest.raises(SystemExit):
        main(base + ["--precision", "0", "--out", str(tmp_path / "x.png"), "--stepz", "3"])


# ---- sampling feeds the UNet what training feeds it --------------------------------------------------

def stroke_and_box_mask(size: int = SIZE) -> np.ndarray:
    """A box and a one-pixel stroke on an odd column: off the tiny VAE's 2-px latent grid."""
    m = box_mask(size)
    m[2:30, 27] = True
    return m


class _Recorder:
    """Records every UNet call's input sample, timestep, text embedding and class labels."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        hidden = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        self.calls.append((sample.detach().clone(), hidden.detach().clone(), kwargs["class_labels"].clone()))

    def remove(self):
        self.handle.remove()


def _training_input(parts: dict, image: np.ndarray, mask: np.ndarray, level: int, prompt: str):
    """The UNet input, text embedding and level that `forward_loss` gives the UNet for one inpainting sample."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from smartbrush.train.config import load_train_config
    from smartbrush.train.loop import forward_loss

    level_map = np.where(mask, 0, 255).astype(np.uint8)
    batch = {"image": torch.from_numpy(image).permute(2, 0, 1)[None], "level_map": torch.from_numpy(level_map)[None, None],
             "level": torch.tensor([level]), "is_inpainting": torch.tensor([True]), "text": [prompt], "key": ["k"]}
    c = SimpleNamespace(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                        scheduler=DDPMScheduler.from_config(parts["scheduler"].config))
    cfg = load_train_config("tiny", {"data": {"text_dropout": 0.0}})
    rec = _Recorder(parts["unet"])
    with torch.no_grad():
        forward_loss(c, parts["unet"], batch, cfg, torch.Generator().manual_seed(0), "cpu")
    rec.remove()
    (x, text, labels), = rec.calls
    return x, text, labels


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_sampler_feeds_the_unet_what_training_feeds_it(tmp_path, scheduler):
    """At every sampling step the mask channel and the masked-image latents are exactly the training
    ones, and outside the given mask the latents are the clean image latents (after the scheduler's
    scale_model_input, whatever it scales by), as the training objective's forward process leaves them."""
    from diffusers import EulerDiscreteScheduler

    parts = tiny_components(str(tmp_path))
    if scheduler == "euler":
        parts["scheduler"] = EulerDiscreteScheduler.from_config(parts["scheduler"].config)
    p = SmartBrushPipeline(**parts)
    p.set_progress_bar_config(disable=True)
    image, mask = picture(1), stroke_and_box_mask()
    trained, text, level = _training_input(parts, image, mask, 1, "a red ball")
    outside = (trained[:, 4:5] < 0.5).expand(-1, 4, -1, -1)
    assert trained[:, 4:5].sum() > box_mask()[::2, ::2].sum()  # the stroke is in the latent mask

    rec = _Recorder(p.unet)
    run(p, image=Image.fromarray(image), mask_image=Image.fromarray(mask.astype(np.uint8) * 255), precision=1,
        num_inference_steps=6, guidance_scale=5.0)
    rec.remove()
    assert len(rec.calls) == 6
    for step, (x, hidden, labels) in enumerate(rec.calls):
        assert x.shape == (2,) + tuple(trained.shape[1:])  # classifier-free guidance: [unconditional, text]
        for half in x:  # both halves see the same conditioning
            half = half[None]
            # clean image latents outside the mask
            torch.testing.assert_close(half[:, :4][outside], trained[:, :4][outside], rtol=0, atol=1e-5)
            assert torch.equal(half[:, 4:5], trained[:, 4:5]), step  # the mask channel
            torch.testing.assert_close(half[:, 5:], trained[:, 5:], rtol=0, atol=1e-5)  # masked-image latents
            assert not torch.allclose(half[:, :4][~outside], trained[:, :4][~outside], atol=1e-2)  # noisy inside
        torch.testing.assert_close(hidden[1:], text, rtol=0, atol=1e-6)
        assert torch.equal(labels, level.repeat(2))


def test_latent_mask_covers_thin_and_off_grid_strokes(pipe):
    from smartbrush.model.inputs import mask_to_latent

    seen = {}

    def callback(pipe, step, t, kw):
        seen["mask"] = kw["mask"].clone()
        return {}

    mask = stroke_and_box_mask()
    run(pipe, mask_image=Image.fromarray(mask.astype(np.uint8) * 255), num_inference_steps=2,
        callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["mask"])
    pooled = mask_to_latent(torch.from_numpy(mask)[None, None].float(), (SIZE // 2, SIZE // 2))
    assert torch.equal(seen["mask"], pooled)
    assert seen["mask"][0, 0, 1:15, 13].sum() == 14  # the 1-px stroke at column 27 -> latent column 13
    # At SD's scale (8 px a latent cell), a 4-px stroke off the grid covers one latent cell per row.
    big = torch.zeros(1, 1, 512, 512)
    big[..., 2:6] = 1
    assert mask_to_latent(big, (64, 64)).sum() == 64


def test_scheduler_config_without_clip_sample_is_corrected(tmp_path):
    from diffusers import DDIMScheduler

    parts = tiny_components(str(tmp_path))
    config = {k: v for k, v in parts["scheduler"].config.items() if k != "clip_sample"}
    old = DDIMScheduler.from_config(config)  # an SD v1.4-era config: clip_sample missing, so True
    assert old.config.clip_sample is True
    p = SmartBrushPipeline(**{**parts, "scheduler": old})
    p.set_progress_bar_config(disable=True)
    assert p.scheduler.config.clip_sample is False
    p.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "scheduler" / "scheduler_config.json").read_text())["clip_sample"] is False
    ref = run(p, seed=2, output_type="latent").images
    # A scheduler swapped in after construction is corrected at call time.
    p.scheduler = DDIMScheduler.from_config(config)
    assert torch.equal(run(p, seed=2, output_type="latent").images, ref)
    assert p.scheduler.config.clip_sample is False


def test_switch_at_one_composites_through_the_given_mask(tmp_path):
    p = SmartBrushPipeline(**tiny_components(str(tmp_path)))
    p.set_progress_bar_config(disable=True)
    set_mask_bias(p.unet, -8.0)  # the model predicts "no object"
    out = run(p, num_inference_steps=4, switch_at=1.0, output_type="pil")
    assert p.switch_step is None
    got, given = np.asarray(out.images[0]), box_mask()
    assert np.array_equal(got[~given], picture(1)[~given])
    assert not np.array_equal(got[given], picture(1)[given])  # painted through the given mask
    assert np.array_equal(got, np.asarray(run(p, num_inference_steps=4, switch_at=None, output_type="pil").images[0]))
