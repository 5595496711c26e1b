"""Frechet distance, FID feature statistics and the per-sample measures of `smartbrush eval`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smartbrush.eval.frechet import FeatureStats, fid_from_stats, frechet_distance
from smartbrush.eval.measures import box_crop, iou, psnr, region_mse
from tests.tiny_extractors import TinyFeatureNet


def _spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def _sqrtm(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T


def test_frechet_distance_closed_form_diagonal():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())  # 1 + 6.25 + 4 + 1 + 0
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(12.25)


def test_frechet_distance_closed_form_general_covariances():
    s1, s2 = _spd(5, 1), _spd(5, 2)
    mu1, mu2 = torch.arange(5.0, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    r = _sqrtm(s1)
    expected = float((mu1 - mu2).dot(mu1 - mu2) + s1.trace() + s2.trace() - 2 * _sqrtm(r @ s2 @ r).trace())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_feature_stats_fid_of_gaussian_samples_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    d, n = 3, 200_000
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    c1, c2 = _spd(d, 3), _spd(d, 4)
    x = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(c1).T
    y = mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(c2).T
    a, b = FeatureStats(), FeatureStats()
    for chunk in x.split(7_000):  # accumulated in pieces, as batches come
        a.update(chunk)
    b.update(y)
    assert a.n == n and torch.allclose(a.cov, torch.cov(x.T), atol=1e-9)
    expected = frechet_distance(mu1, c1, mu2, c2)
    assert fid_from_stats(a, b) == pytest.approx(expected, rel=0.03)


def test_fid_of_a_set_against_itself_is_zero_and_agrees_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8))
    fake = torch.from_numpy(np.clip(rng.normal(100, 30, (24, 3, 32, 32)), 0, 255).astype(np.uint8))
    net = TinyFeatureNet().eval()
    with torch.no_grad():
        fr, ff = net(real), net(fake)
    a, b = FeatureStats(), FeatureStats()
    a.update(fr)
    b.update(ff)
    assert fid_from_stats(a, a) == pytest.approx(0.0, abs=1e-8)
    ours = fid_from_stats(a, b)
    assert ours > 1e-3
    metric = FrechetInceptionDistance(feature=net)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-4)


def test_region_mse_and_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255  # one pixel off by the full range
    region = np.zeros((4, 4), bool)
    region[0, :2] = True
    assert region_mse(b, a, region) == pytest.approx(0.5)
    assert psnr(0.5) == pytest.approx(10 * math.log10(2))
    assert region_mse(b, a, ~region) == 0.0 and psnr(0.0) == 100.0 and psnr(0.0, cap_db=60) == 60
    assert region_mse(b, a, np.zeros((4, 4), bool)) is None


def test_iou_and_box_crop():
    p, t = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    p[:2, :2], t[:2, :] = True, True
    assert iou(p, t) == pytest.approx(0.5) and iou(t, t) == 1.0 and iou(p & False, t & False) == 1.0
    img = np.zeros((10, 10, 3), np.uint8)
    img[2:4, 5:9] = 200
    crop = box_crop(img, [5, 2, 9, 4], 8)
    assert crop.shape == (8, 8, 3) and crop.min() >= 190
