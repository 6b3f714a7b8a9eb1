"""The paper's toy analysis (Sec. 3.2-3.3, Figs. 4-6), measured.

Two settings, each a foundation model trained on 2-D Gaussian mixtures, then one concept customised
toward a linear distribution by three methods:

- ``full``:     every weight fine-tuned (DreamBooth-like, no prior preservation);
- ``kv``:       only the cross-attention K/V projections (Custom-Diffusion-like);
- ``infusion``: frozen model, F's maps reused, a residual on the concept token's value (Eq. 7).

``agnostic`` (Fig. 4): four concepts, one peak each; the top-left one learns a diagonal line.
Measured on the three *other* concepts: latent Fisher divergence (Def. 3.1), and relative to the
base model the area their samples cover, sqrt(det cov), and their std along the narrowest
direction (the paper's "shrinking", Fig. 4).
``specific`` (Fig. 5): one class with 25 modes; the customisation data shows lines at only 5 of
them. Measured: modes kept, line shape (std_x / std_y inside kept modes), W2^2 to the base
model's samples of the class, and LFD on a second, non-customised concept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

from infusion.metrics.fisher import latent_fisher_divergence
from infusion.metrics.wasserstein import wasserstein2
from infusion.toy import data
from infusion.toy.model import InfusionToy, ToyDenoiser

METHODS = ("full", "kv", "infusion")
LEARNING_RATES = {"full": 1e-3, "kv": 1e-3, "infusion": 1e-2}  # infusion: the paper's 1e-2
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)


@dataclass
class Setting:
    """A foundation model's concepts (token k+1 -> sampler k) and the customisation."""

    name: str
    concepts: list  # samplers, one per concept token
    customised: int  # index into concepts
    target: object  # sampler of the customisation data
    ideal: object  # sampler of the ideal customised distribution (for plots)


def settings() -> dict[str, Setting]:
    peaks = data.four_peaks()
    cls = data.class_25_modes()
    other = data.Mixture(torch.tensor([[3.5, 0.0]]), 0.3)  # a second concept of Fig. 5's model
    return {
        "agnostic": Setting("agnostic", peaks, 0, data.four_peaks_target(), data.four_peaks_target()),
        "specific": Setting("specific", [cls, other], 0, data.class_25_target(data.DIAGONAL), data.class_25_target()),
    }


def tokens_for(concept: int, n: int) -> torch.Tensor:
    """The toy prompt "<sos> concept_k": tokens [n, 2] (0 is <sos>)."""
    return torch.tensor([[0, concept + 1]]).expand(n, 2)


def _loss(model, x0, tok, sched, gen):
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return (model(sched.add_noise(x0, noise, t), t, tok) - noise).pow(2).mean()


def train_foundation(setting: Setting, steps: int = 4000, batch: int = 512, seed: int = 0, progress=True) -> ToyDenoiser:
    """Pretrain on every concept of the setting (equal shares per batch)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ToyDenoiser(vocab=len(setting.concepts) + 1)
    sched = DDPMScheduler(**SCHEDULE)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    k = len(setting.concepts)
    per = batch // k
    for _ in tqdm(range(steps), desc=f"foundation ({setting.name})", disable=not progress):
        x0 = torch.cat([s.sample(per, gen) for s in setting.concepts])
        tok = torch.cat([tokens_for(i, per) for i in range(k)])
        loss = _loss(model, x0, tok, sched, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    return model.eval()


def make_customised(base: ToyDenoiser, method: str, concept: int) -> tuple[torch.nn.Module, list]:
    """The customised model and its trainable parameters."""
    if method == "infusion":
        model = InfusionToy(base, concept + 1)
        return model, list(model.deltas)
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    if method == "full":
        params = list(model.parameters())
    elif method == "kv":
        params = [p for a in model.cross_attentions() for p in (a.to_k.weight, a.to_v.weight)]
    else:
        raise ValueError(f"unknown toy method {method!r}; choose from {METHODS}")
    for p in params:
        p.requires_grad_(True)
    return model, params


@torch.no_grad()
def sample(model, concept: int, n: int, seed: int, steps: int = 50) -> torch.Tensor:
    """DDIM (eta = 0) samples [n, 2] of a concept; same seed -> same starting noise."""
    sched = DDIMScheduler(**SCHEDULE)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    tok = tokens_for(concept, n)
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(n), tok), t, x).prev_sample
    return x


class _PromptEps:
    """EpsPredictor over the toy: prompts are concept indices written as strings."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, z_t, t, prompts):
        tok = torch.stack([tokens_for(int(p), 1)[0] for p in prompts])
        return self.model(z_t, t, tok)


def toy_lfd(base, model, setting: Setting, n: int = 1000, seed: int = 0):
    """Def. 3.1 on real samples of every non-customised concept (common random numbers)."""
    gen = torch.Generator().manual_seed(seed + 1)
    others = [i for i in range(len(setting.concepts)) if i != setting.customised]
    x0 = torch.cat([setting.concepts[i].sample(n, gen) for i in others])
    prompts = [str(i) for i in others for _ in range(n)]
    return latent_fisher_divergence(
        _PromptEps(base), _PromptEps(model), x0, prompts, DDPMScheduler(**SCHEDULE), batch_size=2048, seed=seed, progress=False
    )


def _minor_std(x: torch.Tensor) -> float:
    """Std along the narrowest direction of points [n, 2] (sqrt of cov's smallest eigenvalue)."""
    return float(torch.linalg.eigvalsh(torch.cov(x.T.double()))[0].clamp_min(0).sqrt())


def _area(x: torch.Tensor) -> float:
    """sqrt(det(cov)) of points [n, 2]: the area a distribution covers (0 for a line)."""
    return float(torch.linalg.det(torch.cov(x.T.double())).clamp_min(0).sqrt())


def line_shape(points: torch.Tensor, centres: torch.Tensor, radius: float = 0.35) -> float:
    """Median over modes (with >= 10 points) of std_x / std_y of the points near that mode:
    about 1 for round blobs, about 7 for the target's horizontal segments."""
    d = torch.cdist(points.double(), centres.double())
    near, idx = d.min(1)
    ratios = []
    for k in range(centres.shape[0]):
        p = points[(idx == k) & (near < radius)].double()
        if p.shape[0] >= 10:
            ratios.append(float(p[:, 0].std() / p[:, 1].std().clamp_min(1e-6)))
    return float(torch.tensor(ratios).median()) if ratios else float("nan")


@dataclass
class Checkpoint:
    method: str
    step: int
    samples: dict  # concept index -> [n, 2]
    metrics: dict = field(default_factory=dict)


def evaluate(base, model, setting: Setting, method: str, step: int, base_samples: dict, n: int, seed: int) -> Checkpoint:
    samples = {i: sample(model, i, n, seed + i) for i in range(len(setting.concepts))}
    c = setting.customised
    lfd = toy_lfd(base, model, setting, seed=seed)
    m = {"lfd": lfd.mean, "lfd_se": lfd.stderr, "w2": wasserstein2(base_samples[c], samples[c])}
    others = [i for i in samples if i != c]
    m["area_ratio"] = sum(_area(samples[i]) / _area(base_samples[i]) for i in others) / len(others)
    m["minor_ratio"] = sum(_minor_std(samples[i]) / _minor_std(base_samples[i]) for i in others) / len(others)
    if setting.name == "specific":
        centres = data.grid_centres()
        m["modes_kept"] = data.count_modes(samples[c], centres)
        m["line_shape"] = line_shape(samples[c], centres)
    return Checkpoint(method, step, samples, m)


def customise(base, setting: Setting, method: str, eval_steps: list[int], batch: int = 256, n_eval: int = 1000,
              seed: int = 0, progress=True) -> tuple[list[Checkpoint], torch.nn.Module]:
    """Train one method on the customisation data, evaluating at ``eval_steps`` (0 = base).
    Returns the checkpoints' samples and metrics, and the final customised model."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    model, params = make_customised(base, method, setting.customised)
    opt = torch.optim.AdamW(params, lr=LEARNING_RATES[method], weight_decay=0.0)
    sched = DDPMScheduler(**SCHEDULE)
    base_samples = {i: sample(base, i, n_eval, seed + i) for i in range(len(setting.concepts))}
    out = [evaluate(base, model, setting, method, 0, base_samples, n_eval, seed)] if 0 in eval_steps else []
    tok = tokens_for(setting.customised, batch)
    model.train()
    for step in tqdm(range(1, max(eval_steps) + 1), desc=f"{setting.name}/{method}", disable=not progress):
        loss = _loss(model, setting.target.sample(batch, gen), tok, sched, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in eval_steps:
            model.eval()
            out.append(evaluate(base, model, setting, method, step, base_samples, n_eval, seed))
            model.train()
    return out, model.eval()
