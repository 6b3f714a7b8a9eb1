"""Overfitting and fidelity metrics (DESIGN section 5; paper Sec. 3, 5.1).

- ``latent_fisher_divergence``: concept-agnostic overfitting (Def. 3.1), any two eps predictors.
- ``latent_w2`` / ``wasserstein2``: concept-specific overfitting (Def. 3.2), Frechet form.
- ``CLIPScorer`` / ``DINOScorer`` / ``FunctionScorer``: CLIP-T, CLIP-I, DINO-I, or probes.
"""

from infusion.metrics.eps import EpsPredictor, InfusionEps, UNetEps, as_eps_predictor
from infusion.metrics.fisher import LFDResult, latent_fisher_divergence
from infusion.metrics.scorers import (
    CLIPScorer,
    DINOScorer,
    FunctionScorer,
    Scorer,
    mean_cosine_to_references,
    scoring_texts,
)
from infusion.metrics.wasserstein import (
    DEFAULT_POOL,
    fit_gaussian,
    gaussian_w2_squared,
    latent_w2,
    latent_w2_distance,
    pool_latents,
    wasserstein2,
)

__all__ = [
    "EpsPredictor",
    "UNetEps",
    "InfusionEps",
    "as_eps_predictor",
    "LFDResult",
    "latent_fisher_divergence",
    "Scorer",
    "CLIPScorer",
    "DINOScorer",
    "FunctionScorer",
    "mean_cosine_to_references",
    "scoring_texts",
    "DEFAULT_POOL",
    "pool_latents",
    "fit_gaussian",
    "gaussian_w2_squared",
    "wasserstein2",
    "latent_w2",
    "latent_w2_distance",
]
