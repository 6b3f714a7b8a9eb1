"""The built-in world: procedural scenes, a small Stable Diffusion trained on them, probes, concepts."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

MODEL_ENV = "INFUSION_WORLD_MODEL"  # another export of the world model to use as ``world`` (a candidate being trained)


def model_dir() -> Path:
    """The world model (diffusers layout: ``StableDiffusionPipeline.from_pretrained(model_dir())``): the packaged
    one, or the folder ``$INFUSION_WORLD_MODEL`` names (to measure a candidate export with every tool)."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
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
