"""The evaluation harness (``infusion evaluate``): images, fidelity, LFD, W2, tables, curves."""

from __future__ import annotations

from infusion.core.model_profiles import model_profile
from infusion.evaluation.harness import EvalConfig, build_jobs, discover_entries, load_generator, run_evaluation
from infusion.evaluation.prompts import dreambench_prompts, prompts_for
from infusion.metrics.scorers import CLIPScorer, DINOScorer
from infusion.world.profile import WorldProfile

__all__ = ["EvalConfig", "run_evaluation", "discover_entries", "build_jobs", "load_generator", "build_scorers",
           "dreambench_prompts", "prompts_for"]


def build_scorers(model: str, clip: str | None = None, dino: str | None = None, device: str = "cpu",
                  probes: bool | None = None) -> list:
    """Scorers for a run: CLIP (``clip``: path or hub id), DINO (``dino``), and the built-in world's probes
    (``probes=None``: when the model's profile has a scorer of its own, i.e. on the world; True: always)."""

    scorers = []
    if probes is not False:
        own = model_profile(model).scorer() if probes is None else world_probe_scorer()
        if own is not None:
            scorers.append(own)
    if clip:
        scorers.append(CLIPScorer(clip, device=device))
    if dino:
        scorers.append(DINOScorer(dino, device=device))
    return scorers


def world_probe_scorer():
    """The built-in world's probes as a Scorer (text fidelity, concept fidelity)."""
    return WorldProfile().scorer()
