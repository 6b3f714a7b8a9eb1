"""One rule for every interval and error bar on the results page: a 95% percentile bootstrap over units resampled
within each concept (stratified), so that a mean over concepts keeps every concept's weight.

A unit is what the statistic is computed over: a (concept, prompt) pair for per-image metrics (both seeds of a
prompt move together), a (concept, latent) pair for the latent Fisher divergence. Written by hand because the
statistic is often not a mean of the units (W2 is a distance between two fitted Gaussians) and SciPy's
``bootstrap`` does not resample strata.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

B = 1000  # resamples
LEVEL = 0.95
SEED = 0  # the same resamples every time the page is built


def bootstrap_interval(strata: Sequence[int], statistic: Callable[[list[np.ndarray]], float], b: int = B,
                       level: float = LEVEL, seed: int = SEED) -> tuple[float, float, float]:
    """(estimate, low, high) of ``statistic`` under a stratified bootstrap.

    strata: the number of units in each stratum (concept); statistic(picks): ``picks[s]`` holds the unit indices
    (with repeats) drawn for stratum ``s``; the estimate is ``statistic`` on every unit once.
    """
    if not strata or any(n < 1 for n in strata):
        raise ValueError(f"every stratum needs at least one unit, got {list(strata)}")
    rng = np.random.default_rng(seed)
    estimate = float(statistic([np.arange(n) for n in strata]))
    draws = np.array([statistic([rng.integers(0, n, n) for n in strata]) for _ in range(b)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return estimate, float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return estimate, float(low), float(high)


def mean_interval(values_by_stratum: Sequence[Sequence[float]], **kw) -> tuple[float, float, float]:
    """(mean over strata of each stratum's mean, low, high): the page's rule for per-unit values."""
    arrays = [np.asarray(v, dtype=np.float64) for v in values_by_stratum]
    return bootstrap_interval([len(a) for a in arrays],
                              lambda picks: float(np.mean([a[p].mean() for a, p in zip(arrays, picks)])), **kw)
