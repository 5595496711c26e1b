"""Metric feature extractors from local files only (nothing is downloaded).

FID, one of two extractors, each checked on every batch (finite features of one size, or an error that
names the file):
  * `fid_weights`: the FID Inception v3 weights file (torch-fidelity's
    `weights-inception-2015-12-05-6726825d.pth`) through torchmetrics' `feature_extractor_weights_path=`,
    2048-d pool features, `antialias=False` by default for numbers comparable with earlier papers. This
    path needs the `torch-fidelity` package (it holds the Inception graph, and it pulls torchvision);
    without it the error names the alternative below.
  * `fid_torchscript`: a TorchScript module taking uint8-range images (N, 3, H, W). NVlabs'
    `inception-2015-12-05.pt` (StyleGAN's and clean-fid's) returns 1008 class probabilities unless called
    with `return_features=True`, so that argument is passed whenever the module's forward schema has it;
    a file or module named Inception must then give 2048-d features. Tests use tiny random modules.
CLIP score: torchmetrics' `CLIPScore` with a callable that loads a CLIP model and processor from a local
folder (torchmetrics only takes a local folder whose path contains "openai"). transformers 5's
`get_image_features` / `get_text_features` return model outputs where torchmetrics 1.9 expects tensors,
so the model is wrapped to return the projected embeddings (`pooler_output`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def sha256_weights(path: str) -> str:
    """sha256 of a weights file; for a folder, of the sorted `name sha256` lines of its weight files."""
    if os.path.isfile(path):
        return sha256_file(path)
    lines = []
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            if name.endswith(WEIGHT_SUFFIXES):
                full = os.path.join(root, name)
                lines.append(f"{os.path.relpath(full, path)} {sha256_file(full)}\n")
    if not lines:
        raise ValueError(f"{path}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


INCEPTION_FEATURES = 2048  # the pool features every published FID is computed on


class FeatureError(RuntimeError):
    """Features an extractor returned that no Frechet distance can be computed on."""


@dataclass
class FidExtractor:
    """uint8 (N, 3, H, W) -> features (N, feature_size), checked: finite and of the one expected size."""

    module: object  # a callable network (TorchScript module, or torchmetrics' Inception)
    kind: str  # "inception" (torch-fidelity weights) | "torchscript"
    path: str
    sha256: str
    antialias: bool | None  # the resize into torchmetrics' Inception; None: the TorchScript resizes itself
    call_kwargs: dict = field(default_factory=dict)  # {"return_features": True} for NVlabs' Inception
    feature_size: int = 0

    @torch.no_grad()
    def raw(self, images_uint8: torch.Tensor) -> torch.Tensor:
        device = next(iter(self.module.parameters()), torch.empty(0)).device
        out = self.module(images_uint8.to(device), **self.call_kwargs)
        return out.reshape(images_uint8.shape[0], -1).float().cpu()

    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        f = self.raw(images_uint8)
        if f.shape[1] != self.feature_size:
            raise FeatureError(f"FID extractor {self.path}: {f.shape[1]}-d features, expected {self.feature_size}")
        bad = ~torch.isfinite(f)
        if bad.any():
            rows = sorted({int(i) for i in bad.nonzero()[:, 0]})
            raise FeatureError(f"FID extractor {self.path}: non-finite features (NaN or inf) for images {rows[:10]} "
                               f"of a batch of {f.shape[0]}; no Frechet distance is computed on them")
        return f

    def provenance(self) -> dict:
        return {"kind": self.kind, "path": os.path.abspath(self.path), "sha256": self.sha256,
                "antialias": self.antialias, "call": dict(self.call_kwargs), "feature_size": self.feature_size}


def forward_arguments(module) -> list[str]:
    """Names of a TorchScript module's forward arguments (without self)."""
    return [a.name for a in module.forward.schema.arguments][1:]


def named_inception(path: str, module=None) -> bool:
    names = [os.path.basename(path), getattr(module, "original_name", "") or ""]
    return any("inception" in n.lower() for n in names)


def _probe_size(module, kwargs: dict) -> int:
    probe = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        return int(module(probe, **kwargs).reshape(2, -1).shape[1])


def load_torchscript_extractor(path: str, device: str = "cpu") -> FidExtractor:
    """A TorchScript FID extractor called as its authors call it: with `return_features=True` when its
    forward takes that argument (NVlabs' inception-2015-12-05.pt returns 1008 class probabilities
    otherwise). A file or module named Inception must give 2048-d features."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID TorchScript extractor {path!r} not found")
    module = torch.jit.load(path, map_location="cpu").eval()
    kwargs = {"return_features": True} if "return_features" in forward_arguments(module) else {}
    size = _probe_size(module, kwargs)
    if named_inception(path, module) and size != INCEPTION_FEATURES:
        raise FeatureError(f"FID extractor {path}: an Inception network here gives {size}-d outputs, not the "
                           f"{INCEPTION_FEATURES}-d pool features FID is computed on (its forward takes "
                           f"{forward_arguments(module)}; NVlabs' file takes return_features)")
    return FidExtractor(module.to(device), "torchscript", path, sha256_file(path), None, kwargs, size)


def load_fid_extractor(fid_weights: str = "", fid_torchscript: str = "", antialias: bool = False,
                       device: str = "cpu") -> FidExtractor | None:
    if fid_weights and fid_torchscript:
        raise ValueError("give one of fid_weights (Inception) and fid_torchscript, not both")
    if fid_weights:
        if not os.path.isfile(fid_weights):
            raise FileNotFoundError(f"FID Inception weights {fid_weights!r} not found")
        from torchmetrics.image.fid import FrechetInceptionDistance

        try:
            metric = FrechetInceptionDistance(feature=INCEPTION_FEATURES, feature_extractor_weights_path=fid_weights,
                                              antialias=antialias, normalize=False)
        except ModuleNotFoundError as e:
            raise RuntimeError(
                "the FID Inception network comes from the torch-fidelity package, which is not installed here "
                "(it pulls torchvision, which breaks this environment's transformers and diffusers imports). Pass "
                "--fid-torchscript with NVlabs' inception-2015-12-05.pt instead (docs/evaluation.md)") from e
        return FidExtractor(metric.inception.to(device), "inception", fid_weights, sha256_file(fid_weights),
                            antialias, {}, INCEPTION_FEATURES)
    if fid_torchscript:
        return load_torchscript_extractor(fid_torchscript, device)
    return None


class _ClipFeatures(torch.nn.Module):
    """CLIPModel whose get_*_features return the projected embeddings as tensors (what torchmetrics expects)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values):
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _clip_loader(path: str):
    def load():
        from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        model = CLIPModel.from_pretrained(path).eval()
        processor = CLIPProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(path),
                                  tokenizer=CLIPTokenizer.from_pretrained(path))
        return _ClipFeatures(model), processor

    return load


@dataclass
class ClipScorer:
    metric: object  # torchmetrics.multimodal.CLIPScore
    path: str
    sha256: str

    @torch.no_grad()
    def update(self, images_uint8: torch.Tensor, prompts: list[str]) -> None:
        self.metric.update(list(images_uint8), list(prompts))

    def compute_and_reset(self) -> float:
        value = float(self.metric.compute())
        self.metric.reset()
        return value

    def provenance(self) -> dict:
        return {"kind": "clip", "path": os.path.abspath(self.path), "sha256": self.sha256}


def load_clip_scorer(path: str = "") -> ClipScorer | None:
    if not path:
        return None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CLIP folder {path!r} not found (a local folder with a CLIPModel and its processor)")
    from torchmetrics.multimodal.clip_score import CLIPScore

    return ClipScorer(CLIPScore(model_name_or_path=_clip_loader(path)), path, sha256_weights(path))
