"""Noise predictors as plain callables, so one metric serves every customisation method.

An ``EpsPredictor`` maps ``(z_t [B, 4, h, w], t [B] long, prompts list[str]) -> eps [B, 4, h, w]``.
``UNetEps`` (``infusion.core.unet_eps``) wraps a UNet + text encoder (base models, DreamBooth, LoRA, Custom
Diffusion: any model whose weights carry the customisation); ``InfusionEps`` (``infusion.methods.infusion.eps``)
the Infusion two-stream model. Both are re-exported here.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from infusion.core.unet_eps import TextEncoderCache, UNetEps, unet_kwargs
from infusion.methods.infusion.eps import InfusionEps

__all__ = ["EpsPredictor", "InfusionEps", "TextEncoderCache", "UNetEps", "as_eps_predictor", "unet_kwargs"]


class EpsPredictor(Protocol):
    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


def as_eps_predictor(obj) -> Callable:
    """Accept an EpsPredictor, or a pipeline with unet/text_encoder/tokenizer (-> ``UNetEps``)."""
    if all(hasattr(obj, a) for a in ("unet", "text_encoder", "tokenizer")):
        return UNetEps.from_pipeline(obj)
    if callable(obj):
        return obj
    raise ValueError(f"expected an eps predictor callable or a diffusion pipeline, got {type(obj).__name__}")
