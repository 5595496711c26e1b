"""A tiny random feature network standing in for FID's Inception weights, which cannot be
downloaded here: used in memory by the metric tests and, traced to TorchScript, by `smartbrush eval`."""

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
