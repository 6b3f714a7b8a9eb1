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
    """Text conditioning per prompt string, computed once (prompts repeat across samples): states [77, D_text]
    and, for SDXL (``text_encoder_2`` and ``tokenizer_2`` given), the pooled embedding [P] (``families.encode_ids``)."""

    def __init__(self, text_encoder, tokenizer, text_encoder_2=None, tokenizer_2=None):
        self.encoders = [text_encoder] + ([text_encoder_2] if text_encoder_2 is not None else [])
        self.tokenizers = [tokenizer] + ([tokenizer_2] if tokenizer_2 is not None else [])
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """texts (B) -> (encoder hidden states [B, 77, D_text], pooled [B, P] or None)."""
        from ..families import encode_ids, tokenize

        todo = [s for s in dict.fromkeys(texts) if s not in self._cache]
        if todo:
            states, pooled = encode_ids(self.encoders, [tokenize(tok, todo) for tok in self.tokenizers])
            for i, s in enumerate(todo):
                self._cache[s] = (states[i], None if pooled is None else pooled[i])
        states = torch.stack([self._cache[s][0] for s in texts])
        pooled = None if self._cache[texts[0]][1] is None else torch.stack([self._cache[s][1] for s in texts])
        return states, pooled

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """texts (B) -> encoder hidden states [B, 77, D_text]."""
        return self.encode(texts)[0]


def _cache_of(pipe) -> TextEncoderCache:
    return TextEncoderCache(pipe.text_encoder, pipe.tokenizer, getattr(pipe, "text_encoder_2", None),
                            getattr(pipe, "tokenizer_2", None))


def unet_kwargs(encode: TextEncoderCache, texts: list[str], z_t: torch.Tensor, vae_scale_factor: int = 8) -> dict:
    """The UNet's conditioning of ``texts`` for latents ``z_t``: SDXL adds pooled text and the default time ids
    (original = target = the image size of ``z_t``, crop (0, 0)), as its pipeline does."""
    from ..families import added_cond, time_ids

    states, pooled = encode.encode(texts)
    kwargs = {"encoder_hidden_states": states.to(z_t.dtype)}
    if pooled is not None:
        size = (z_t.shape[-2] * vae_scale_factor, z_t.shape[-1] * vae_scale_factor)
        kwargs.update(added_cond(pooled.to(z_t.dtype), time_ids(size, (0, 0), size).expand(len(texts), -1)))
    return kwargs


class UNetEps:
    """eps of a plain (possibly fine-tuned) UNet conditioned on its text encoder(s)."""

    def __init__(self, unet, text_encoder, tokenizer, text_encoder_2=None, tokenizer_2=None, vae_scale_factor: int = 8):
        self.unet = unet
        self.encode = TextEncoderCache(text_encoder, tokenizer, text_encoder_2, tokenizer_2)
        self.vae_scale_factor = vae_scale_factor

    @classmethod
    def from_pipeline(cls, pipe) -> "UNetEps":
        """From a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (anything with unet/text_encoder/tokenizer)."""
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "tokenizer_2", None), getattr(pipe, "vae_scale_factor", 8))

    @torch.no_grad()
    def __call__(self, z_t, t, prompts):
        return self.unet(z_t, t, **unet_kwargs(self.encode, list(prompts), z_t, self.vae_scale_factor)).sample


class InfusionEps:
    """eps of the Infusion customised model (the C stream) with ``concepts`` loaded.

    For a prompt that names no concept the customised model *is* the F stream, i.e. the base UNet
    with diffusers' own SDPA attention: its eps is bit-identical to the base model's and so the
    latent Fisher divergence on non-customised concepts is exactly 0 (Sec. 4, Fig. 3a). Prompts
    that write ``<name>`` get C rows derived from F rows in one fused UNet call (DESIGN section 1).
    A concept with ``t_max`` < 1 injects only in rows whose t < t_max * T, as ``InfusionPipeline`` samples it
    (``num_train_timesteps`` T: the pipeline's scheduler's).
    """

    def __init__(self, unet, text_encoder, tokenizer, concepts: Iterable, text_encoder_2=None, tokenizer_2=None,
                 vae_scale_factor: int = 8, num_train_timesteps: int = 1000):
        self.unet, self.tokenizer = unet, tokenizer
        self.num_train_timesteps = num_train_timesteps
        self.t_max: dict[str, float] = {}
        self.encode = TextEncoderCache(text_encoder, tokenizer, text_encoder_2, tokenizer_2)
        self.vae_scale_factor = vae_scale_factor
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
                if concept.maps == "own":
                    proc.own_maps.add(concept.name)
            self.class_phrases[concept.name] = concept.class_phrase
            self.t_max[concept.name] = float(concept.t_max)

    @classmethod
    def from_pipeline(cls, pipe, concepts: Iterable) -> "InfusionEps":
        """From an ``InfusionPipeline`` (or any pipeline with unet/text_encoder/tokenizer)."""
        sched = getattr(pipe, "scheduler", None)
        T = int(sched.config.num_train_timesteps) if sched is not None else 1000
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, concepts, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "tokenizer_2", None), getattr(pipe, "vae_scale_factor", 8), T)

    @torch.no_grad()
    def __call__(self, z_t, t, prompts):
        parsed = [parse_prompt(p, self.class_phrases, self.tokenizer) for p in prompts]
        T = self.num_train_timesteps
        live = [[sp for sp in p.spans if float(t[i]) < self.t_max[sp.name] * T] for i, p in enumerate(parsed)]
        c_rows = [i for i, spans in enumerate(live) if spans]  # a row whose concepts are all off at its t is F
        plan = InfusionPlan.build("fused", len(parsed), c_rows, [live[i] for i in c_rows])
        texts = [p.text for p in parsed]
        idx = torch.tensor(c_rows, dtype=torch.long, device=z_t.device)
        rows = texts + [texts[i] for i in c_rows]  # rows [F (B), C (n_c)]: C shares its F row's text conditioning
        zz = torch.cat([z_t, z_t[idx]])
        out = self.unet(zz, torch.cat([t, t[idx]]), cross_attention_kwargs={"infusion": plan},
                        **unet_kwargs(self.encode, rows, zz, self.vae_scale_factor)).sample
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
