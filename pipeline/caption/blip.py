"""BLIP captions of local object crops through transformers (BLIP or BLIP-2 checkpoints).

`BlipCaptioner.from_pretrained(path_or_id)` validates the checkpoint on the launcher (it loads only
config, tokenizer and image-processor files); the weights load on the workers, once per process
(or once per machine with `share_model`), through `BlipModelHandler` in Beam's RunInference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from smartbrush.pipeline.caption.crops import CropPolicy, caption_crop
from smartbrush.pipeline.caption.captioners import Captioner, add_caption, caption_record
from smartbrush.pipeline.errors import rejection
from smartbrush.pipeline.imaging.masks import rle_to_mask

log = logging.getLogger("smartbrush.caption")

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
ARCHITECTURES = {"blip": "BlipForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration"}
_CHECKPOINT_FILES = (".json", ".safetensors", ".bin", ".txt", ".model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
DEGENERATE = "caption_degenerate"


class CaptionerConfigError(ValueError):
    """The model path, checkpoint or settings cannot work; raised before any pipeline starts."""


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = 1  # 1: greedy search
    max_new_tokens: int = 20
    prompt: str = ""  # e.g. "a picture of": conditions the decoder, stripped from the caption
    dtype: str = "float32"  # float16 / bfloat16 need device cuda

    def to_dict(self) -> dict:
        return {"decoding": "greedy" if self.num_beams == 1 else "beam", **asdict(self)}


@dataclass(frozen=True)
class RuntimeSettings:
    device: str = "cpu"
    min_batch_size: int = 32  # RunInference's BatchElements bounds; a bundle's last batch can be smaller
    max_batch_size: int = 32
    share_model: bool = False  # one model per machine instead of one per worker process
    # torch threads per process on CPU. Beam already runs one process per core, and more threads
    # than cores makes small models many times slower; 0: torch's default (all cores).
    cpu_threads: int = 1


@dataclass(frozen=True)
class ImageInput:
    """What the checkpoint's image processor does, so that crops can be resized on the CPU workers
    and normalised on the device in one batched operation."""
    height: int
    width: int
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float
    do_rescale: bool = True
    do_normalize: bool = True

    def fill(self) -> tuple[int, int, int]:
        """Padding and greyed-out background: the mean colour, which normalises to zero."""
        return tuple(int(round(m * 255)) for m in self.mean) if self.do_normalize else (128, 128, 128)


@dataclass(frozen=True)
class Checkpoint:
    model: str  # as the user gave it: recorded in every caption
    load_from: str  # local directory or hub id
    hub_revision: str | None  # commit to load on every worker (hub ids only)
    revision: str  # recorded: the hub commit, or "sha256:..." of a local directory's files
    model_type: str  # "blip" | "blip-2"


def strip_prompt(text: str, prompt: str) -> str:
    """`text` without a leading `prompt`, compared word by word and case-insensitively (tokenizers
    lower-case and re-space the prompt when they decode it)."""
    text = text.strip()
    want = [t.lower() for t in _TOKEN.findall(prompt)]
    if not want:
        return text
    got = list(_TOKEN.finditer(text))
    if len(got) >= len(want) and [m.group().lower() for m in got[:len(want)]] == want:
        return text[got[len(want) - 1].end():].strip()
    return text


def degenerate_detail(caption: str) -> str | None:
    """Why a caption (prompt already stripped) is unusable, or None when it is fine."""
    words = _WORD.findall(caption.lower())
    if not words:
        return f"no words in {caption!r}"
    if len(words) > 1 and len(set(words)) == 1:
        return f"one word repeated: {caption!r}"
    return None


def clean_caption(raw: str, prompt: str) -> tuple[str | None, str]:
    """(caption, "") or (None, why it was dropped) for one decoded model output."""
    caption = strip_prompt(raw, prompt)
    detail = degenerate_detail(caption)
    if detail is not None:
        return None, f"{detail} (decoded {raw!r})" if caption != raw.strip() else detail
    return caption, ""


def attach_captions(rows: list[dict], raw_texts: dict[str, str], captioner: "BlipCaptioner",
                    stage: str = "caption") -> tuple[list[dict], list[dict]]:
    """Rows with the model's caption added (other captions kept), and one rejection-style row per
    caption dropped as degenerate: those rows keep their other captions and stay in the table."""
    out, dropped = [], []
    for row in rows:
        iid = row["instance_id"]
        if iid not in raw_texts:
            raise ValueError(f"no model output for {iid}")
        text, why = clean_caption(raw_texts[iid], captioner.generation.prompt)
        if text is None:
            out.append(row)
            dropped.append(rejection(iid, row["source"], stage, DEGENERATE, why, row["image_path"]))
        else:
            out.append(add_caption(row, captioner.record(text)))
    return out, dropped


def normalise_batch(crops: Sequence[np.ndarray], image: ImageInput, device: str, dtype):
    """N x H x W x 3 uint8 crops (already at the processor's size) -> pixel_values as the image
    processor computes them (rescale, normalise, channels first), built on `device`."""
    import torch

    x = torch.from_numpy(np.stack(crops)).to(device).permute(0, 3, 1, 2).float()
    if image.do_rescale:
        x = x * image.rescale_factor
    if image.do_normalize:
        mean = torch.tensor(image.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(image.std, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.to(dtype)


def _directory_revision(path: str) -> str:
    """A local checkpoint's revision: one sha256 over its files' names and bytes (not a file digest)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full) or not name.endswith(_CHECKPOINT_FILES):
            continue
        h.update(name.encode() + b"\0")
        with open(full, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def resolve_checkpoint(path_or_id: str, revision: str | None = None) -> tuple[Checkpoint, object]:
    """The checkpoint and its transformers config; CaptionerConfigError with a clear message when
    the path does not exist or the checkpoint is not a BLIP captioning model."""
    from transformers import AutoConfig

    if os.path.isdir(path_or_id):
        if not os.path.isfile(os.path.join(path_or_id, "config.json")):
            raise CaptionerConfigError(f"{path_or_id}: not a transformers checkpoint (no config.json)")
        try:
            config = AutoConfig.from_pretrained(path_or_id)
        except Exception as e:
            raise CaptionerConfigError(f"{path_or_id}: unreadable config.json ({_first_line(e)})") from None
        ckpt = Checkpoint(path_or_id, path_or_id, None, _directory_revision(path_or_id), config.model_type)
    elif os.path.exists(path_or_id):
        raise CaptionerConfigError(f"{path_or_id}: a file; --model needs a checkpoint directory or a hub id")
    elif not _HUB_ID.match(path_or_id):
        raise CaptionerConfigError(f"{path_or_id}: model path does not exist")
    else:
        from transformers.utils import cached_file

        try:
            config = AutoConfig.from_pretrained(path_or_id, revision=revision)
            config_file = cached_file(path_or_id, "config.json", revision=revision)
        except Exception as e:
            raise CaptionerConfigError(
                f"{path_or_id}: no such local directory, and not a hub model that could be loaded "
                f"({_first_line(e)}); with HF_HUB_OFFLINE=1 only cached models load") from None
        parent = os.path.basename(os.path.dirname(config_file))
        commit = parent if re.fullmatch(r"[0-9a-f]{40}", parent) else (revision or "")
        ckpt = Checkpoint(path_or_id, path_or_id, commit or None, commit, config.model_type)
    expected = ARCHITECTURES.get(config.model_type)
    if expected is None:
        raise CaptionerConfigError(f"{path_or_id}: not a BLIP checkpoint (model_type {config.model_type!r}; "
                                   f"captioning needs one of {sorted(ARCHITECTURES)})")
    archs = getattr(config, "architectures", None) or [expected]
    if expected not in archs:
        raise CaptionerConfigError(f"{path_or_id}: a {'/'.join(archs)} checkpoint, not {expected}: "
                                   "it has no captioning head")
    return ckpt, config


def read_image_input(ckpt: Checkpoint) -> ImageInput:
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    try:
        ip = BlipImageProcessorPil.from_pretrained(ckpt.load_from, revision=ckpt.hub_revision)
    except Exception as e:
        raise CaptionerConfigError(f"{ckpt.model}: no usable image processor config ({_first_line(e)})") from None
    if not (ip.size.height and ip.size.width):
        raise CaptionerConfigError(f"{ckpt.model}: image processor size {ip.size} is not height x width")
    mean = tuple(float(v) for v in np.broadcast_to(np.asarray(ip.image_mean, dtype=float), 3))
    std = tuple(float(v) for v in np.broadcast_to(np.asarray(ip.image_std, dtype=float), 3))
    return ImageInput(int(ip.size.height), int(ip.size.width), int(ip.resample), mean, std,
                      float(ip.rescale_factor), bool(ip.do_rescale), bool(ip.do_normalize))


def check_settings(generation: GenerationSettings, runtime: RuntimeSettings) -> None:
    if runtime.device not in DEVICES:
        raise CaptionerConfigError(f"device {runtime.device!r}: one of {DEVICES}")
    if generation.dtype not in DTYPES:
        raise CaptionerConfigError(f"dtype {generation.dtype!r}: one of {DTYPES}")
    if runtime.device == "cpu" and generation.dtype != "float32":
        raise CaptionerConfigError(f"dtype {generation.dtype} needs --device cuda; on CPU use float32")
    if generation.num_beams < 1 or generation.max_new_tokens < 1:
        raise CaptionerConfigError("num_beams and max_new_tokens must be >= 1")
    if not 1 <= runtime.min_batch_size <= runtime.max_batch_size:
        raise CaptionerConfigError(f"batch sizes: need 1 <= min ({runtime.min_batch_size}) <= max "
                                   f"({runtime.max_batch_size})")


class BlipRuntime:
    """A loaded model and tokenizer on one device: crops in, decoded texts out."""

    def __init__(self, ckpt: Checkpoint, image: ImageInput, generation: GenerationSettings, runtime: RuntimeSettings):
        import torch
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration, BlipForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per worker process is noise in a job's log
        if runtime.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no CUDA device on this worker")
        if runtime.device == "cpu" and runtime.cpu_threads > 0:
            torch.set_num_threads(runtime.cpu_threads)
        self.image, self.generation, self.device = image, generation, runtime.device
        self.dtype = getattr(torch, generation.dtype)
        cls = Blip2ForConditionalGeneration if ckpt.model_type == "blip-2" else BlipForConditionalGeneration
        self.model = cls.from_pretrained(ckpt.load_from, revision=ckpt.hub_revision, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(ckpt.load_from, revision=ckpt.hub_revision)
        self.prompt_ids = self._prompt_ids(ckpt.model_type, generation.prompt)

    def _prompt_ids(self, model_type: str, prompt: str) -> list[int] | None:
        if not prompt:
            return None
        ids = self.tokenizer(prompt).input_ids
        if model_type == "blip-2":
            # BLIP-2 expects the query tokens' placeholders before the text.
            cfg = self.model.config
            image_token = getattr(cfg, "image_token_id", None) or getattr(cfg, "image_token_index", None)
            if image_token is None:
                raise RuntimeError("BLIP-2 checkpoint without image_token_index: cannot condition on a prompt")
            ids = [image_token] * cfg.num_query_tokens + list(ids)
        return list(ids)

    def caption_batch(self, crops: Sequence[np.ndarray]) -> list[str]:
        import torch

        size = (self.image.height, self.image.width, 3)
        bad = [c.shape for c in crops if c.shape != size]
        if bad:
            raise ValueError(f"crops must be {size} uint8, got {bad[0]}")
        with torch.inference_mode():
            pixels = normalise_batch(crops, self.image, self.device, self.dtype)
            kwargs = {}
            if self.prompt_ids is not None:
                kwargs["input_ids"] = torch.tensor([self.prompt_ids] * len(crops), device=self.device)
            out = self.model.generate(pixel_values=pixels, max_new_tokens=self.generation.max_new_tokens,
                                      num_beams=self.generation.num_beams, do_sample=False, **kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


class BlipCaptioner(Captioner):
    """Captions object crops with a BLIP checkpoint; picklable (the loaded model is not pickled)."""

    name = "blip"
    needs_image = True

    def __init__(self, ckpt: Checkpoint, image: ImageInput, generation: GenerationSettings = GenerationSettings(),
                 runtime: RuntimeSettings = RuntimeSettings(), crop: CropPolicy = CropPolicy()):
        check_settings(generation, runtime)
        self.ckpt, self.image, self.generation, self.runtime, self.crop = ckpt, image, generation, runtime, crop
        self._loaded: BlipRuntime | None = None

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, revision: str | None = None,
                        generation: GenerationSettings = GenerationSettings(),
                        runtime: RuntimeSettings = RuntimeSettings(),
                        crop: CropPolicy = CropPolicy()) -> "BlipCaptioner":
        """Validate a local checkpoint directory or a hub id (downloads its small files when not
        cached and not offline) and read its image-processor settings; weights load lazily."""
        check_settings(generation, runtime)
        ckpt, _ = resolve_checkpoint(path_or_id, revision)
        image = read_image_input(ckpt)
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(ckpt.load_from, revision=ckpt.hub_revision)
        except Exception as e:
            raise CaptionerConfigError(f"{path_or_id}: no usable tokenizer ({_first_line(e)})") from None
        return cls(ckpt, image, generation, runtime, crop)

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None}

    @property
    def model_id(self) -> str:
        return self.ckpt.model

    def settings(self) -> dict:
        """What a caption record stores: everything that changes the text (not the device or batching)."""
        return {"generation": self.generation.to_dict(), "crop": self.crop.to_dict(),
                "image_size": [self.image.height, self.image.width]}

    def describe(self) -> dict:
        return {"captioner": self.name, "model": self.ckpt.model, "revision": self.ckpt.revision,
                "model_type": self.ckpt.model_type, "settings": self.settings(), "runtime": asdict(self.runtime)}

    def record(self, text: str) -> dict:
        return caption_record(text, self.ckpt.model, self.ckpt.revision, self.settings())

    def crop_input(self, image: np.ndarray, row: dict) -> np.ndarray:
        """One instance's model input (RecordError("crop_failed") when it cannot be made)."""
        mask = None
        if self.crop.grey_background:
            mask = rle_to_mask({"size": list(row["mask_rle_size"]), "counts": row["mask_rle_counts"]})
        return caption_crop(image, row["box_xyxy"], self.crop, (self.image.height, self.image.width), mask,
                            self.image.fill(), self.image.resample)

    def load_runtime(self) -> BlipRuntime:
        return BlipRuntime(self.ckpt, self.image, self.generation, self.runtime)

    def caption_texts(self, crops: Sequence[np.ndarray]) -> list[str]:
        """Raw decoded texts, one per crop (loads the model on first use)."""
        if self._loaded is None:
            self._loaded = self.load_runtime()
        return self._loaded.caption_batch(crops) if len(crops) else []

    def caption_rows(self, rows: list[dict], crops: list | None = None) -> list[dict | None]:
        if crops is None or len(crops) != len(rows):
            raise ValueError("BlipCaptioner needs one crop per row (see crop_input)")
        out = []
        for raw in self.caption_texts(crops):
            text, _ = clean_caption(raw, self.generation.prompt)
            out.append(None if text is None else self.record(text))
        return out

    def model_handler(self):
        """The RunInference handler (imported here: Beam's inference module imports torch)."""
        from smartbrush.pipeline.caption.blip_handler import BlipModelHandler

        return BlipModelHandler(self)
