"""SmartBrushPipeline: text- and shape-guided object inpainting with mask-precision control.

A diffusers `DiffusionPipeline` (components `vae`, `text_encoder`, `tokenizer`, `unet`, `scheduler`)
for the SmartBrush UNet (model/unet.py): 9 input channels (noisy latent 4, mask 1,
masked-image latent 4), 5 output channels (noise 4, object-mask logit 1), the precision level s passed
as `class_labels`. diffusers' `StableDiffusionInpaintPipeline` cannot run it: it hands every output
channel to the scheduler. Here the first four channels are the noise prediction and the fifth the
object-mask logit.

The UNet sees what training shows it (model/inputs.py, shared with train/): the given mask max-pooled
to latent size, the masked image's latents (the VAE posterior's mode) and, outside the given mask, the
clean image latents at every step (after the scheduler's `scale_model_input`); only inside the given
mask does it see the denoising latents.

Background preservation (SmartBrush, Sec. 3.3): the known background is blended into the latents after
every step through a blend mask (the image latents re-noised to the next timestep outside it, as
diffusers' 4-channel inpainting path does). The blend mask is the given mask for the first
`switch_at` fraction of the steps and then the model's predicted object mask: thresholded, optionally
dilated, never outside the given mask. The decoded image is composited with the input in pixel space
through the (upsampled) predicted mask with a feathered edge (through the given mask when no step
switched), so pixels outside the given mask are exactly the input's.

A scheduler config with `clip_sample` missing or true, or `steps_offset` other than 1 (old SD v1
checkpoints), is corrected as diffusers' Stable Diffusion pipelines correct it: DDIM would otherwise clip
the predicted latents to [-1, 1].

    pipe = SmartBrushPipeline.from_pretrained("run/final")     # or the components
    out = pipe(image=img, mask_image=box_mask, precision=4, prompt="a dog",
               generator=torch.Generator().manual_seed(0))
    out.images[0], out.masks[0]                                # PIL images
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.configuration_utils import FrozenDict
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from smartbrush.model.inputs import decode_latents, encode_latents, mask_to_latent, unet_input


@dataclass
class SmartBrushPipelineOutput(BaseOutput):
    """`images`: the inpainted images; `masks`: the predicted object masks at image resolution
    (binary, already clipped to the given mask), as PIL images, numpy arrays (N, H, W) in {0, 1} or
    tensors (N, 1, H, W), following `output_type`."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    masks: list[PIL.Image.Image] | np.ndarray | torch.Tensor


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), edge padding; sigma in pixels."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, k.expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fix_scheduler_config(scheduler) -> None:
    """`steps_offset = 1` and `clip_sample = False` in place, as diffusers' StableDiffusionPipeline does for
    old SD v1 scheduler configs (a config without `clip_sample` loads with the default True)."""
    if scheduler is None:
        return
    new = {}
    if getattr(scheduler.config, "steps_offset", 1) != 1:
        new["steps_offset"] = 1
    if getattr(scheduler.config, "clip_sample", False) is True:
        new["clip_sample"] = False
    if new:
        scheduler._internal_dict = FrozenDict({**scheduler.config, **new})


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of (N, 1, H, W) in {0, 1} by a square of side 2 * radius + 1."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


class SmartBrushPipeline(DiffusionPipeline, StableDiffusionMixin):
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "blend_mask", "mask_logits",
                               "mask", "masked_image_latents"]

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: KarrasDiffusionSchedulers):
        super().__init__()
        self._check_unet(unet)
        fix_scheduler_config(scheduler)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.mask_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False,
                                                do_binarize=True, do_convert_grayscale=True)

    @staticmethod
    def _check_unet(unet) -> None:
        if unet is None:
            return
        cfg = unet.config
        if cfg.in_channels != 9 or cfg.out_channels != 5:
            raise ValueError(f"SmartBrushPipeline needs a 9-in / 5-out UNet (noise 4 + mask logit 1); this one has "
                             f"in_channels={cfg.in_channels}, out_channels={cfg.out_channels}")
        if not cfg.num_class_embeds:
            raise ValueError("SmartBrushPipeline needs a UNet with num_class_embeds = S + 1 (the precision levels)")

    @property
    def num_levels(self) -> int:
        """S + 1: the precision levels the UNet knows (0 = exact ... S = box)."""
        return int(self.unet.config.num_class_embeds)

    # Prompt encoding and scheduler kwargs exactly as diffusers' Stable Diffusion pipelines do them.
    encode_prompt = StableDiffusionPipeline.encode_prompt
    prepare_extra_step_kwargs = StableDiffusionPipeline.prepare_extra_step_kwargs

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def clip_skip(self):
        return self._clip_skip

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def switch_step(self) -> int | None:
        """The step index of the last call from which the blend mask was the predicted mask (None: no switch)."""
        return self._switch_step

    def _encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, x)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents)

    def _check_inputs(self, image, mask_image, precision, steps, switch_at, mask_threshold, callback_inputs):
        if image is None or mask_image is None:
            raise ValueError("`image` and `mask_image` are required")
        levels = [precision] if isinstance(precision, int) else list(precision)
        for s in levels:
            if not isinstance(s, (int, np.integer)) or not 0 <= int(s) < self.num_levels:
                raise ValueError(f"precision {s!r}: this UNet knows levels 0..{self.num_levels - 1}")
        if steps < 1:
            raise ValueError("num_inference_steps >= 1 required")
        if switch_at is not None and not 0.0 <= switch_at <= 1.0:
            raise ValueError(f"switch_at {switch_at}: a fraction of the steps in [0, 1], or None for no switch")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold {mask_threshold}: in (0, 1)")
        bad = [k for k in callback_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad}: not in {self._callback_tensor_inputs}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput = None,
        mask_image: PipelineImageInput = None,
        precision: int | list[int] = 0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        switch_at: float | None = 0.5,
        mask_threshold: float = 0.5,
        mask_dilation: int = 0,
        feather: float = 2.0,
        blend: bool = True,
        composite: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        r"""Inpaint `image` inside `mask_image` (white = inpaint) at precision level `precision`.

        Args:
            precision: s, 0 (the mask is the object's exact shape) ... S (the mask is only its box); one per
                prompt or one for all.
            switch_at: fraction of the steps after which the blend mask is the model's predicted mask
                instead of the given one (step index `round(switch_at * num_inference_steps)`); None turns
                the switch off (blend and composite through the given mask: the ablation), and so does
                1.0 (no step is after the switch).
            mask_threshold: the predicted mask is `sigmoid(logit) > mask_threshold`.
            mask_dilation: dilate the predicted mask by this many pixels (latent cells: ceil(px / 8)) before
                clipping it to the given mask.
            feather: sigma in pixels of the Gaussian that softens the composite mask's edge (inside the
                given mask only).
            blend: blend the known background into the latents after every step.
            composite: composite the decoded image with the input in pixel space.
            callback_on_step_end: `f(pipe, step, timestep, kwargs) -> dict` after every step, as in diffusers;
                `blend_mask` (the latent-resolution mask that step blended through) and `mask_logits` are
                among `_callback_tensor_inputs`.
        Returns:
            `SmartBrushPipelineOutput(images, masks)` or the tuple `(images, masks)`.
        """
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        self._check_inputs(image, mask_image, precision, num_inference_steps, switch_at, mask_threshold,
                           callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._switch_step = None
        fix_scheduler_config(self.scheduler)  # also when a scheduler was swapped in after construction

        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None:
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        n = batch_size * num_images_per_prompt
        device = self._execution_device

        # 1. Text
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, clip_skip=self.clip_skip)
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if self.do_classifier_free_guidance else prompt_embeds
        dtype = self.unet.dtype

        # 2. Image, given mask, masked image (pixel space, image in [-1, 1], mask in {0, 1})
        height, width = self.image_processor.get_default_height_width(image, height, width)
        init_image = self.image_processor.preprocess(image, height=height, width=width).to(device, torch.float32)
        given = self.mask_processor.preprocess(mask_image, height=height, width=width).to(device, torch.float32)
        if init_image.shape[0] not in (1, batch_size) or given.shape[0] not in (1, batch_size):
            raise ValueError(f"{init_image.shape[0]} images and {given.shape[0]} masks for {batch_size} prompts")
        init_image = init_image.expand(batch_size, -1, -1, -1).repeat_interleave(num_images_per_prompt, 0)
        given = given.expand(batch_size, -1, -1, -1).repeat_interleave(num_images_per_prompt, 0)
        masked_image = init_image * (given < 0.5)

        image_latents = self._encode_latents(init_image).to(dtype)
        masked_image_latents = self._encode_latents(masked_image).to(dtype)
        lh, lw = image_latents.shape[-2:]
        mask = mask_to_latent(given, (lh, lw)).to(dtype)
        levels = torch.tensor([precision] * batch_size if isinstance(precision, int) else list(precision),
                              device=device, dtype=torch.long)
        if levels.numel() != batch_size:
            raise ValueError(f"{levels.numel()} precision levels for {batch_size} prompts")
        levels = levels.repeat_interleave(num_images_per_prompt)

        # 3. Timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        shape = (n, self.vae.config.latent_channels, lh, lw)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None \
            else latents.to(device, dtype)
        latents = noise * self.scheduler.init_noise_sigma
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        switch_step = None if switch_at is None else int(round(switch_at * len(timesteps)))
        cond_mask = torch.cat([mask] * 2) if self.do_classifier_free_guidance else mask
        cond_masked = torch.cat([masked_image_latents] * 2) if self.do_classifier_free_guidance else masked_image_latents
        cond_image = torch.cat([image_latents] * 2) if self.do_classifier_free_guidance else image_latents
        class_labels = torch.cat([levels] * 2) if self.do_classifier_free_guidance else levels
        latent_dilation = int(math.ceil(mask_dilation / self.vae_scale_factor)) if mask_dilation > 0 else 0
        blend_mask = mask
        mask_logits = torch.zeros_like(mask)

        # 4. Denoising
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                x = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                x = unet_input(self.scheduler.scale_model_input(x, t), cond_mask, cond_masked, cond_image)
                out = self.unet(x, t, encoder_hidden_states=embeds, class_labels=class_labels, return_dict=False)[0]
                noise_pred, logits = out[:, :4], out[:, 4:5]
                if self.do_classifier_free_guidance:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                    logits = logits.chunk(2)[1]  # the mask the text-conditioned branch predicts
                mask_logits = logits
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if switch_step is not None and i >= switch_step:
                    if self._switch_step is None:
                        self._switch_step = i
                    predicted = (torch.sigmoid(logits.float()) > mask_threshold).to(dtype)
                    blend_mask = _dilate(predicted, latent_dilation) * mask  # never outside the given mask
                else:
                    blend_mask = mask
                if blend:
                    known = image_latents
                    if i < len(timesteps) - 1:
                        known = self.scheduler.add_noise(image_latents, noise, timesteps[i + 1:i + 2])
                    latents = (1 - blend_mask) * known + blend_mask * latents

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds, "blend_mask": blend_mask,
                             "mask_logits": mask_logits, "mask": mask, "masked_image_latents": masked_image_latents}
                    outputs = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents) if outputs else latents
                progress_bar.update()

        # 5. Predicted mask at image resolution (the last step's prediction), clipped to the given mask
        prob = F.interpolate(torch.sigmoid(mask_logits.float()), size=(height, width), mode="bilinear",
                             align_corners=False)
        pred_mask = _dilate((prob > mask_threshold).float(), int(mask_dilation)) * given

        if output_type == "latent":
            images = latents
        else:
            decoded = self._decode(latents).float()
            if composite:
                through = given if self._switch_step is None else pred_mask
                alpha = _gaussian_blur(through, feather) * given  # feathered inside the given mask, 0 outside
                decoded = alpha * decoded.clamp(-1, 1) + (1 - alpha) * init_image
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        if output_type == "pil":
            masks = [PIL.Image.fromarray((m[0] > 0.5).astype(np.uint8) * 255) for m in pred_mask.cpu().numpy()]
        elif output_type == "pt" or output_type == "latent":
            masks = pred_mask
        else:
            masks = pred_mask[:, 0].cpu().numpy()

        self.maybe_free_model_hooks()
        if not return_dict:
            return images, masks
        return SmartBrushPipelineOutput(images=images, masks=masks)


def default_scheduler(config) -> DDIMScheduler:
    """DDIM from a scheduler config (the pipeline's default sampler)."""
    return DDIMScheduler.from_config(config)
