"""Loading a base Stable Diffusion model: diffusers folder, single-file checkpoint, hub id, or a
built-in name (``tiny`` random model for smoke runs, ``world`` the built-in world model)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

BUILTIN = ("tiny", "world")


def resolve_model(model: str) -> str:
    """Map a built-in name to its path; leave paths and hub ids alone."""
    if model == "world":
        try:
            from .world import model_dir
        except ImportError as e:  # the world ships in its own issue
            raise ValueError("the built-in world model is not available in this version") from e
        return str(model_dir())
    return model


def load_base_pipeline(model: str, pipeline_cls=None, torch_dtype: torch.dtype | None = None, config: str | None = None):
    """A ``StableDiffusionPipeline`` (or ``pipeline_cls``) for ``model``.

    model: ``tiny`` | ``world`` | a diffusers folder | a single-file ``.safetensors`` checkpoint
    (``config``: a local diffusers folder or repo id with the matching configs, needed offline) |
    a hub id (needs network or a local cache).
    """
    from diffusers import StableDiffusionPipeline

    cls = pipeline_cls or StableDiffusionPipeline
    if model == "tiny":
        from .tiny import tiny_sd_pipeline

        pipe = tiny_sd_pipeline()
        return pipe if cls is StableDiffusionPipeline else cls.from_pipe(pipe)
    path = resolve_model(model)
    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if os.path.isfile(path):
        if Path(path).suffix.lower() != ".safetensors":
            raise ValueError(f"{path}: only .safetensors single-file checkpoints are supported (never pickled .ckpt)")
        if config is not None:
            kwargs["config"] = config
        pipe = cls.from_single_file(path, **kwargs)
    elif os.path.isdir(path):
        if not (Path(path) / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        pipe = cls.from_pretrained(path, **kwargs)
    else:
        try:
            pipe = cls.from_pretrained(path, **kwargs)
        except Exception as e:
            raise ValueError(
                f"could not load model {model!r}: not a local folder or file, and loading it as a hub id failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
    pipe.model_id = model
    return pipe
