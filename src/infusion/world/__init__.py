"""The built-in world: procedural scenes, a small Stable Diffusion trained on them, probes, concepts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def model_dir() -> Path:
    """The packaged world model (diffusers layout: ``StableDiffusionPipeline.from_pretrained(model_dir())``)."""
    return Path(str(resources.files("infusion") / "world" / "model"))


def contextualizer_path() -> Path:
    """The MLM contextualizer pretrained for the world model's (frozen) text encoder (``--contextualizer world``)."""
    return Path(str(resources.files("infusion") / "world" / "contextualizer.safetensors"))


def is_world_model(model) -> bool:
    """Whether ``model`` (a ``--model`` string or path) names the packaged world model."""
    if not isinstance(model, (str, Path)):
        return False
    if str(model) == "world":
        return True
    try:
        return Path(model).resolve() == model_dir().resolve()
    except OSError:
        return False
