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
    try:
        from ..world import probes
    except ImportError as e:
        raise ValueError("this version has no built-in world probes; pass --clip/--dino instead") from e
    if hasattr(probes, "scorer"):
        return probes.scorer()
    from ..metrics.scorers import FunctionScorer

    return FunctionScorer("world", text_fn=probes.text_fidelity, image_fn=probes.concept_fidelity)
