"""Latent Fisher divergence (paper Def. 3.1, Eq. 4): concept-agnostic overfitting.

    D_F(p_theta(z|c_bar) || p_theta'(z|c_bar)) ~= 1/2 E_{z, t, eps} || eps_theta(z_t, t, c_bar) - eps_theta'(z_t, t, c_bar) ||^2

over real latents z with their captions c_bar of *non-customised* concepts, t uniform over the
training timesteps, eps ~ N(0, I). Both models see the same (z, t, eps) per sample (common random
numbers), so the estimate's variance comes only from the sample, and a model compared with itself
gives exactly 0. The squared norm is summed over all latent dimensions (Def. 3.1); divide by
C*h*w for a per-dimension figure. The predictors return what their UNet predicts; for a
v-prediction scheduler (SD 2.x, the world model) it is converted to eps first,
eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) z_t, so figures are comparable across parametrisations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class LFDResult:
    """mean and standard error of 1/2 ||eps_a - eps_b||^2 over ``n`` samples (``per_sample`` [n])."""

    mean: float
    stderr: float
    n: int
    per_sample: np.ndarray

    def __str__(self) -> str:
        return f"{self.mean:.6g} +- {self.stderr:.2g} (n={self.n})"


def _check_inputs(latents, prompts, scheduler):
    if latents.ndim < 2:
        raise ValueError(f"latents must be [N, ...] (SD: [N, 4, h, w]), got shape {tuple(latents.shape)}")
    if len(prompts) != latents.shape[0]:
        raise ValueError(f"need one caption per latent: {latents.shape[0]} latents, {len(prompts)} prompts")
    if latents.shape[0] == 0:
        raise ValueError("no latents given: LFD needs real latents of non-customised concepts")
    if not hasattr(scheduler, "add_noise") or not hasattr(scheduler, "config"):
        raise ValueError("scheduler must be a diffusers noise scheduler (add_noise, config.num_train_timesteps)")


def as_epsilon(pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, scheduler) -> torch.Tensor:
    """A UNet's prediction [B, C, h, w] at (z_t, t [B]) as eps, for the scheduler's ``prediction_type``."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return pred
    if kind != "v_prediction":
        raise ValueError(f"latent Fisher divergence supports epsilon and v_prediction UNets, not {kind!r}")
    ab = scheduler.alphas_cumprod.to(pred.device, torch.float64)[t].view(-1, *([1] * (pred.ndim - 1)))
    return (ab.sqrt() * pred.double() + (1 - ab).sqrt() * z_t.double()).to(pred.dtype)


def latent_fisher_divergence(
    eps_a,
    eps_b,
    latents: torch.Tensor,
    prompts: list[str],
    scheduler,
    repeats: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> LFDResult:
    """Estimate Def. 3.1 between two eps predictors (see ``metrics.eps``).

    latents [N, ...] (SD: [N, 4, h, w] VAE latents already scaled by ``vae.config.scaling_factor``) with their
    captions; each pair is used ``repeats`` times with fresh (t, noise). ``seed`` fixes t and noise,
    so the estimate is deterministic and identical for every pair of models compared.
    """
    _check_inputs(latents, prompts, scheduler)
    gen = torch.Generator().manual_seed(seed)
    T = scheduler.config.num_train_timesteps
    N = latents.shape[0]
    order = torch.arange(N).repeat(repeats)  # (N*repeats,)
    ts = torch.randint(0, T, (len(order),), generator=gen)  # t ~ U{0..T-1}
    values = []
    for start in tqdm(range(0, len(order), batch_size), desc="latent Fisher divergence", disable=not progress):
        idx = order[start : start + batch_size]
        z0 = latents[idx].float()
        noise = torch.randn(z0.shape, generator=gen).to(z0.device)
        t = ts[start : start + batch_size].to(z0.device)
        # Contiguous: a channels-last input (e.g. fresh from a VAE) picks other conv kernels, and
        # two predictors that copy their input differently would differ by round-off.
        z_t = scheduler.add_noise(z0, noise, t).contiguous()  # (b, 4, h, w)
        caps = [prompts[i] for i in idx.tolist()]
        a = as_epsilon(eps_a(z_t, t, caps), z_t, t, scheduler).double().cpu()
        b = as_epsilon(eps_b(z_t, t, caps), z_t, t, scheduler).double().cpu()
        values.append(0.5 * (a - b).pow(2).flatten(1).sum(1))  # (b,)
    per = torch.cat(values).numpy()
    n = len(per)
    stderr = float(per.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return LFDResult(float(per.mean()), stderr, n, per)
