"""The evaluation harness (``infusion evaluate``): images, fidelity, LFD, W2, tables, curves."""

from __future__ import annotations

from .harness import EvalConfig, build_jobs, discover_entries, load_generator, run_evaluation
from .prompts import dreambench_prompts, prompts_for

__all__ = ["EvalConfig", "run_evaluation", "discover_entries", "build_jobs", "load_generator", "build_scorers",
           "dreambench_prompts", "prompts_for"]


def build_scorers(model: str, clip: str | None = None, dino: str | None = None, device: str = "cpu",
                  probes: bool | None = None) -> list:
    """Scorers for a run: CLIP (``clip``: path or hub id), DINO (``dino``), and on the built-in
    world its probes (default there: ``probes=None`` means "when the model is the world")."""
    from ..metrics.scorers import CLIPScorer, DINOScorer

    scorers = []
    if probes or (probes is None and model == "world"):
        scorers.append(world_probe_scorer())
    if clip:
        scorers.append(CLIPScorer(clip, device=device))
    if dino:
        scorers.append(DINOScorer(dino, device=device))
    return scorers


def world_probe_scorer():
    """The built-in world's probes as a Scorer (text fidelity, concept fidelity)."""
    from .world_scorer import WorldProbeScorer

    try:
        return WorldProbeScorer()
    except FileNotFoundError as e:
        raise ValueError(f"the world's probes are not trained in this install ({e}); pass --no-probes or --clip/--dino") from e
