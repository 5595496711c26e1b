"""Metric feature extractors from local files only (nothing is downloaded).

FID: torchmetrics' `FrechetInceptionDistance` owns the extractor, in one of two ways:
  * `fid_weights`: the FID Inception v3 weights file (torch-fidelity's
    `weights-inception-2015-12-05-6726825d.pth`) through `feature_extractor_weights_path=`, 2048-d pool
    features, `antialias=False` by default for numbers comparable with earlier papers. This path needs
    the `torch-fidelity` package (it holds the Inception graph, and it pulls torchvision); without it the
    error names the alternative below.
  * `fid_torchscript`: any TorchScript module that maps uint8 images (N, 3, H, W) to features (N, D),
    passed as torchmetrics' custom `feature` module (tests use a tiny one through this interface).
CLIP score: torchmetrics' `CLIPScore` with a callable that loads a CLIP model and processor from a local
folder (torchmetrics only takes a local folder whose path contains "openai"). transformers 5's
`get_image_features` / `get_text_features` return model outputs where torchmetrics 1.9 expects tensors,
so the model is wrapped to return the projected embeddings (`pooler_output`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

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


@dataclass
class FidExtractor:
    """uint8 (N, 3, H, W) -> features (N, D) through torchmetrics' FrechetInceptionDistance module."""

    metric: object  # torchmetrics.image.fid.FrechetInceptionDistance
    kind: str  # "inception" | "torchscript"
    path: str
    sha256: str
    antialias: bool

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        device = next(iter(self.metric.parameters()), torch.empty(0)).device
        return self.metric.inception(images_uint8.to(device)).reshape(images_uint8.shape[0], -1).float().cpu()

    def provenance(self) -> dict:
        return {"kind": self.kind, "path": os.path.abspath(self.path), "sha256": self.sha256,
                "antialias": self.antialias}


class _TorchScriptFeatures(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def load_fid_extractor(fid_weights: str = "", fid_torchscript: str = "", antialias: bool = False,
                       device: str = "cpu") -> FidExtractor | None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    if fid_weights and fid_torchscript:
        raise ValueError("give one of fid_weights (Inception) and fid_torchscript, not both")
    if fid_weights:
        if not os.path.isfile(fid_weights):
            raise FileNotFoundError(f"FID Inception weights {fid_weights!r} not found")
        try:
            metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=fid_weights,
                                              antialias=antialias, normalize=False)
        except ModuleNotFoundError as e:
            raise RuntimeError(
                "the FID Inception network comes from the torch-fidelity package, which is not installed here "
                "(it pulls torchvision, which breaks this environment's transformers and diffusers imports). Pass "
                "--fid-torchscript with a TorchScript export of the extractor instead (docs/evaluation.md shows "
                "how to export torchmetrics' Inception once in a separate environment)") from e
        return FidExtractor(metric.to(device), "inception", fid_weights, sha256_file(fid_weights), antialias)
    if fid_torchscript:
        if not os.path.isfile(fid_torchscript):
            raise FileNotFoundError(f"FID TorchScript extractor {fid_torchscript!r} not found")
        module = torch.jit.load(fid_torchscript, map_location="cpu").eval()
        metric = FrechetInceptionDistance(feature=_TorchScriptFeatures(module), normalize=False)
        return FidExtractor(metric.to(device), "torchscript", fid_torchscript, sha256_file(fid_torchscript), antialias)
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
