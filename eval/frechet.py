"""Frechet distance between Gaussians fitted to feature sets (FID, local FID).

Feature statistics are accumulated in float64 (sum and sum of outer products, as torchmetrics'
FrechetInceptionDistance does), so the real set's statistics are computed once and shared by every
method and precision level.
"""

from __future__ import annotations

import torch


class FeatureStats:
    """Running mean and covariance of feature vectors (N, D)."""

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.n = 0
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self._sqrt_cov: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        f = features.detach().reshape(features.shape[0], -1).to("cpu", torch.float64)
        if self._sum is None:
            self.dim = f.shape[1]
            self._sum = torch.zeros(self.dim, dtype=torch.float64)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        if f.shape[1] != self.dim:
            raise ValueError(f"features of dimension {f.shape[1]}, expected {self.dim}")
        self._sum += f.sum(0)
        self._outer += f.T @ f
        self.n += f.shape[0]
        self._sqrt_cov = None

    @property
    def mean(self) -> torch.Tensor:
        return self._sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased sample covariance (n - 1 in the denominator), as torchmetrics and pytorch-fid."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        mu = self.mean
        return (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)

    @property
    def sqrt_cov(self) -> torch.Tensor:
        """The symmetric square root of the covariance, computed once (the real set's is shared)."""
        if self._sqrt_cov is None:
            self._sqrt_cov = psd_sqrt(self.cov)
        return self._sqrt_cov


def psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """S^(1/2) of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding: 0)."""
    w, v = torch.linalg.eigh(sigma.to(torch.float64))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     sqrt_sigma1: torch.Tensor | None = None) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric positive
    semi-definite R S2 R, R = S1^(1/2) (S1 S2 is similar to it), found by symmetric eigensolvers:
    they neither fail on the singular covariances of small sets, as a general matrix square root can,
    nor cost the nonsymmetric solver's time on 2048-d features. `sqrt_sigma1` may give R."""
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    r = psd_sqrt(sigma1) if sqrt_sigma1 is None else sqrt_sigma1.to(torch.float64)
    m = r @ sigma2 @ r
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    value = diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return float(value.clamp(min=0))


def fid_from_stats(real: FeatureStats, generated: FeatureStats) -> float:
    return frechet_distance(real.mean, real.cov, generated.mean, generated.cov, sqrt_sigma1=real.sqrt_cov)
