"""Tiny random feature networks standing in for FID's Inception, which cannot be downloaded here: one used
in memory by the metric tests and, traced to TorchScript, by `smartbrush eval`; one with the call
signature of NVlabs' inception-2015-12-05.pt; one whose features are not finite on black images."""

from __future__ import annotations

import torch


class TinyFeatureNet(torch.nn.Module):
    """uint8 images [B, 3, H, W] -> 6 features; seeded, so every instance has the same weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 5, stride=4), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x.float() / 255.0)


def tiny_fid_torchscript(path: str) -> str:
    """TinyFeatureNet traced and saved as TorchScript at `path` (what --fid-torchscript loads)."""
    torch.jit.trace(TinyFeatureNet().eval(), torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).save(path)
    return path


class TinyNvlabsInception(torch.nn.Module):
    """The call signature of NVlabs' inception-2015-12-05.pt, random weights: uint8-range images (N, 3, H, W)
    -> 1008 class probabilities, or with return_features=True the 2048-d features they come from."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = torch.nn.Linear(48, 2048)
        self.classes = torch.nn.Linear(2048, 1008)

    def forward(self, img, return_features: bool = False):
        x = torch.nn.functional.adaptive_avg_pool2d(img.to(torch.float32) / 255.0, 4).flatten(1)
        f = torch.relu(self.features(x))
        if return_features:
            return f
        return torch.softmax(self.classes(f), dim=1)


def tiny_nvlabs_inception(path: str) -> str:
    torch.jit.script(TinyNvlabsInception().eval()).save(path)
    return path


class TinyLogFeatures(torch.nn.Module):
    """Features log(mean channel value): -inf for an all-black image (a non-finite feature)."""

    def forward(self, img):
        return torch.log(img.to(torch.float32).mean(dim=(2, 3)))


def tiny_log_features(path: str) -> str:
    torch.jit.script(TinyLogFeatures()).save(path)
    return path
