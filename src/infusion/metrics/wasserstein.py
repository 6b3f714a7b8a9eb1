"""2-Wasserstein distance between Gaussians fitted to latents (paper Def. 3.2, Sec. 3.3).

As FID does (Heusel et al. 2017), each set of samples is summarised by a Gaussian N(mu, S) and

    W2^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})

(the Frechet form). ``wasserstein2`` and ``latent_w2`` return the *squared* distance W2^2, as FID does, so a
pure mean shift s gives exactly ||s||^2; ``latent_w2_distance`` returns W2 itself (||s|| for that shift), in the
units of the latents. All arithmetic is float64.

SD latents are 4 x 64 x 64 = 16,384 numbers, far more dimensions than the few hundred samples an
evaluation draws, so a covariance fitted to them is singular and meaningless. We reduce each latent
by average pooling to ``4 x p x p`` (default p = 2: 16 dims, i.e. the mean of each latent channel
in each image quadrant): coarse layout and colour, the "modalities" of Sec. 3.3.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

DEFAULT_POOL = 2  # latents -> 4 x 2 x 2 = 16 dims


def pool_latents(latents: torch.Tensor, pool: int = DEFAULT_POOL) -> torch.Tensor:
    """Average-pool latents [N, C, h, w] to [N, C*pool*pool] (float64) for Gaussian fitting."""
    if latents.ndim != 4:
        raise ValueError(f"latents must be [N, C, h, w], got shape {tuple(latents.shape)}")
    if pool < 1 or pool > min(latents.shape[-2:]):
        raise ValueError(f"pool must be in 1..{min(latents.shape[-2:])} for latents {tuple(latents.shape)}, got {pool}")
    pooled = F.adaptive_avg_pool2d(latents.detach().double().cpu(), pool)  # (N, C, p, p)
    return pooled.flatten(1)


def fit_gaussian(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of samples x [N, D] (N >= 2), float64."""
    x = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"samples must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to fit a Gaussian, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("samples contain NaN or inf")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigendecomposition (tiny negative eigenvalues,
    round-off of a singular covariance, are clipped to 0). Stabler than ``linalg.sqrtm`` on the
    non-symmetric product S_1 S_2 that FID code uses."""
    w, v = linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_w2_squared(mu1, s1, mu2, s2) -> float:
    """W2^2 between N(mu1, s1) and N(mu2, s2); mu [D], s [D, D]."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    cross = _psd_sqrt(r1 @ s2 @ r1)  # (S_1^{1/2} S_2 S_1^{1/2})^{1/2}, symmetric PSD
    d2 = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross))
    return max(d2, 0.0)  # clip -1e-15 round-off


def wasserstein2(x, y) -> float:
    """W2^2 between Gaussians fitted to samples x [N, D] and y [M, D]."""
    mu1, s1 = fit_gaussian(x)
    mu2, s2 = fit_gaussian(y)
    return gaussian_w2_squared(mu1, s1, mu2, s2)


def latent_w2(latents_a: torch.Tensor, latents_b: torch.Tensor, pool: int = DEFAULT_POOL) -> float:
    """W2^2 between generated latents [N, C, h, w] of the original and the customised model,
    each pooled to C*pool*pool dims (see module docstring)."""
    return wasserstein2(pool_latents(latents_a, pool), pool_latents(latents_b, pool))


def latent_w2_distance(latents_a: torch.Tensor, latents_b: torch.Tensor, pool: int = DEFAULT_POOL) -> float:
    """W2 (not squared) between the Gaussians of ``latent_w2``: 0 for one set, ||s|| for a set shifted by s."""
    return float(np.sqrt(latent_w2(latents_a, latents_b, pool)))
