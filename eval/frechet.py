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


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2 (real and >= 0 in
    exact arithmetic: S1 S2 is similar to S1^(1/2) S2 S1^(1/2); rounding noise is clipped), which
    avoids the matrix square root's failures on the singular covariances of small sets."""
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    diff = mu1 - mu2
    eig = torch.linalg.eigvals(sigma1 @ sigma2)
    tr_covmean = eig.real.clamp(min=0).sqrt().sum()
    value = diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return float(value.clamp(min=0))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
