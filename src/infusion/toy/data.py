"""2-D toy distributions of the paper's analysis (Sec. 3.2-3.3, Figs. 4-5).

A "concept" is a token; its distribution is a Gaussian mixture in the plane. Customising a concept
means teaching it a new, *linear* distribution (points on short segments), as in the paper.
All samplers take a ``torch.Generator`` and return float32 points [n, 2].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mixture:
    """Equal-weight isotropic Gaussian mixture: centres [K, 2], one ``std``."""

    centres: torch.Tensor
    std: float

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        k = torch.randint(0, self.centres.shape[0], (n,), generator=gen)
        return self.centres[k] + self.std * torch.randn(n, 2, generator=gen)


@dataclass(frozen=True)
class Segments:
    """Points uniform on segments of length ``length`` and direction ``angle`` (radians) through
    each centre [K, 2], with Gaussian ``jitter``: the "linear distribution" a concept learns."""

    centres: torch.Tensor
    length: float
    angle: float = 0.0
    jitter: float = 0.02

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        k = torch.randint(0, self.centres.shape[0], (n,), generator=gen)
        u = (torch.rand(n, 1, generator=gen) - 0.5) * self.length
        d = torch.tensor([[torch.cos(torch.tensor(self.angle)), torch.sin(torch.tensor(self.angle))]])
        return self.centres[k] + u * d + self.jitter * torch.randn(n, 2, generator=gen)


def four_peaks() -> list[Mixture]:
    """Fig. 4's foundation model: four concepts, one Gaussian peak each (top-left first)."""
    corners = [(-1.5, 1.5), (1.5, 1.5), (-1.5, -1.5), (1.5, -1.5)]
    return [Mixture(torch.tensor([c]), 0.4) for c in corners]


def four_peaks_target() -> Segments:
    """Fig. 4's customisation: a diagonal line through the top-left peak."""
    return Segments(torch.tensor([[-1.5, 1.5]]), length=1.6, angle=-0.785398)


def grid_centres(n: int = 5, spacing: float = 1.0) -> torch.Tensor:
    """n x n mode centres [n*n, 2], centred on the origin."""
    r = (torch.arange(n) - (n - 1) / 2) * spacing
    return torch.cartesian_prod(r, r).flip(-1)


def class_25_modes() -> Mixture:
    """Fig. 5's class: 25 modalities (backgrounds, layouts, styles) of one concept."""
    return Mixture(grid_centres(), 0.08)


DIAGONAL = [0, 6, 12, 18, 24]  # the 5 modes the customisation images show (grid diagonal)


def class_25_target(modes: list[int] | None = None) -> Segments:
    """Fig. 5's customisation data: horizontal segments at 5 of the 25 modes only; with
    ``modes=None`` the ideal outcome, segments at all 25 (Fig. 5e)."""
    c = grid_centres()
    return Segments(c if modes is None else c[modes], length=0.5)


def count_modes(points: torch.Tensor, centres: torch.Tensor, radius: float = 0.35, min_share: float = 0.2) -> int:
    """Modes kept: centres whose radius-ball holds at least ``min_share`` of a uniform share of the
    points (``min_share * n / K``). points [n, 2], centres [K, 2]."""
    d = torch.cdist(points.double(), centres.double())  # (n, K)
    near, idx = d.min(dim=1)
    counts = torch.bincount(idx[near < radius], minlength=centres.shape[0])
    return int((counts >= min_share * points.shape[0] / centres.shape[0]).sum())
