"""Noise predictors as plain callables, so one metric serves every customisation method.

An ``EpsPredictor`` maps ``(z_t [B, 4, h, w], t [B] long, prompts list[str]) -> eps [B, 4, h, w]``.
Adapters here wrap a UNet + text encoder (base models, DreamBooth, LoRA, Custom Diffusion: any
model whose weights carry the customisation) and the Infusion two-stream model.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

import torch

from ..processor import InfusionPlan, install_processors
from ..prompts import parse_prompt


class EpsPredictor(Protocol):
    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


class TextEncoderCache:
    """Text states [77, D_text] per prompt string, computed once (prompts repeat across samples)."""

    def __init__(self, text_encoder, tokenizer):
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """texts (B) -> encoder hidden states [B, 77, D_text]."""
        todo = [s for s in dict.fromkeys(texts) if s not in self._cache]
        if todo:
            ids = self.tokenizer(
                todo, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.text_encoder.device)
            states = self.text_encoder(ids)[0]  # (b, 77, D_text)
            self._cache.update(zip(todo, states))
        return torch.stack([self._cache[s] for s in texts])


class UNetEps:
    """eps of a plain (possibly fine-tuned) UNet conditioned on its text encoder."""

    def __init__(self, unet, text_encoder, tokenizer):
        self.unet = unet
        self.encode = TextEncoderCache(text_encoder, tokenizer)

    @classmethod
    def from_pipeline(cls, pipe) -> "UNetEps":
        """From a ``StableDiffusionPipeline`` (or anything with unet/text_encoder/tokenizer)."""
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer)

    @torch.no_grad()
    def __call__(self, z_t, t, prompts):
        ehs = self.encode(list(prompts)).to(z_t.dtype)
        return self.unet(z_t, t, encoder_hidden_states=ehs).sample


class InfusionEps:
    """eps of the Infusion customised model (the C stream) with ``concepts`` loaded.

    For a prompt that names no concept the customised model *is* the F stream, i.e. the base UNet
    with diffusers' own SDPA attention: its eps is bit-identical to the base model's and so the
    latent Fisher divergence on non-customised concepts is exactly 0 (Sec. 4, Fig. 3a). Prompts
    that write ``<name>`` get C rows derived from F rows in one fused UNet call (DESIGN section 1).
    """

    def __init__(self, unet, text_encoder, tokenizer, concepts: Iterable):
        self.unet, self.tokenizer = unet, tokenizer
        self.encode = TextEncoderCache(text_encoder, tokenizer)
        self.class_phrases: dict[str, str] = {}
        procs = install_processors(unet)
        for concept in concepts:
            missing = sorted(set(procs) - set(concept.deltas))
            extra = sorted(set(concept.deltas) - set(procs))
            if missing or extra:
                raise ValueError(
                    f"concept <{concept.name}> does not fit this UNet: missing layers {missing[:3]}, unknown layers {extra[:3]}"
                )
            for layer, proc in procs.items():
                proc.deltas[concept.name] = concept.deltas[layer]
                if concept.query:
                    proc.query_terms[concept.name] = concept.query[layer]
            self.class_phrases[concept.name] = concept.class_phrase

    @classmethod
    def from_pipeline(cls, pipe, concepts: Iterable) -> "InfusionEps":
        """From an ``InfusionPipeline`` (or any pipeline with unet/text_encoder/tokenizer)."""
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, concepts)

    @torch.no_grad()
    def __call__(self, z_t, t, prompts):
        parsed = [parse_prompt(p, self.class_phrases, self.tokenizer) for p in prompts]
        c_rows = [i for i, p in enumerate(parsed) if p.spans]
        plan = InfusionPlan.build("fused", len(parsed), c_rows, [parsed[i].spans for i in c_rows])
        ehs = self.encode([p.text for p in parsed]).to(z_t.dtype)  # (B, 77, D_text)
        idx = torch.tensor(c_rows, dtype=torch.long, device=z_t.device)
        out = self.unet(
            torch.cat([z_t, z_t[idx]]),  # rows [F (B), C (n_c)]
            torch.cat([t, t[idx]]),
            encoder_hidden_states=torch.cat([ehs, ehs[idx]]),
            cross_attention_kwargs={"infusion": plan},
        ).sample
        eps = out[: len(parsed)].clone()  # F rows
        eps[idx] = out[len(parsed) :]  # C rows replace their prompts' F rows
        return eps


def as_eps_predictor(obj) -> Callable:
    """Accept an EpsPredictor, or a pipeline with unet/text_encoder/tokenizer (-> ``UNetEps``)."""
    if all(hasattr(obj, a) for a in ("unet", "text_encoder", "tokenizer")):
        return UNetEps.from_pipeline(obj)
    if callable(obj):
        return obj
    raise ValueError(f"expected an eps predictor callable or a diffusion pipeline, got {type(obj).__name__}")
