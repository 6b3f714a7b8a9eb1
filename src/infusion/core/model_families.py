"""Model families: what differs between SD 1.x/2.x and SDXL around the UNet (DESIGN section 1).

``sd``   one CLIP text encoder, its last hidden state conditions the UNet (SD 1.x, SD 2.x).
``sdxl`` two text encoders (CLIP ViT-L and OpenCLIP bigG); the UNet gets both penultimate hidden
         states concatenated on the feature axis (B, 77, 768 + 1280), plus ``added_cond_kwargs``:
         the second encoder's pooled, projected embedding ``text_embeds`` (B, 1280) and the
         micro-conditioning ``time_ids`` (B, 6) = original size (h, w), crop top-left (y, x),
         target size (h, w).

Both tokenizers of SDXL share CLIP's BPE vocabulary, so a concept's token positions are the same in
both encoders' sequences, and so in the concatenated states: Infusion's residual lands at those
positions in every ``attn2``, whose keys and values read all 2,048 features.

Everything here restates what diffusers' ``encode_prompt`` and ``_get_add_time_ids`` do inside
their pipelines (they are methods of a pipeline and need its prompts as strings; the trainer needs
them on token ids with learned embeddings injected). Tests check equality with diffusers' own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

SD, SDXL = "sd", "sdxl"
FAMILIES = (SD, SDXL)
FAMILY_NAMES = {SD: "Stable Diffusion 1.x/2.x", SDXL: "SDXL"}


def family_of(pipe) -> str:
    """``"sdxl"`` for a pipeline with a second text encoder (or a text-time UNet), else ``"sd"``."""
    unet = getattr(pipe, "unet", None)
    if getattr(pipe, "text_encoder_2", None) is not None:
        return SDXL
    if unet is not None and getattr(unet.config, "addition_embed_type", None) == "text_time":
        return SDXL
    return SD


def family_of_files(path: str | os.PathLike, config: str | None = None) -> str | None:
    """Family of a diffusers folder (``model_index.json``) or a single ``.safetensors`` checkpoint (its keys:
    SDXL checkpoints hold ``conditioner.embedders.1``); ``config``: the folder that describes a single file.
    None when it cannot be told (a hub id)."""
    path = Path(path)
    if config is not None and Path(config, "model_index.json").is_file():
        path = Path(config)
    if path.is_dir() and (path / "model_index.json").is_file():
        name = json.loads((path / "model_index.json").read_text()).get("_class_name", "")
        return SDXL if "XL" in name else SD
    if path.is_file() and path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = f.keys()
        if any(k.startswith("conditioner.embedders.1.") for k in keys):
            return SDXL
        return SD
    return None


def text_parts(pipe) -> list[tuple[object, torch.nn.Module]]:
    """``[(tokenizer, text_encoder), ...]``: one pair (SD) or two (SDXL)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if family_of(pipe) == SDXL:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def text_encoders(pipe) -> list[torch.nn.Module]:
    return [enc for _, enc in text_parts(pipe)]


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """texts -> ids (B, 77), padded and truncated as the pipelines do."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_ids(encoders: list[torch.nn.Module], ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids, one (B, 77) per encoder -> (states (B, 77, C), pooled (B, P) or None).

    One encoder (SD): its last hidden state, no pooled embedding. Two (SDXL): both penultimate hidden
    states concatenated on the features, pooled = the second encoder's projected embedding.
    """
    if len(encoders) == 1:
        enc = encoders[0]
        return enc(ids[0].to(enc.device))[0], None
    states, pooled = [], None
    for enc, i in zip(encoders, ids):
        out = enc(i.to(enc.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def encode_texts(pipe, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain prompts -> (states (B, 77, C), pooled (B, P) or None), as the family's pipeline encodes them."""
    parts = text_parts(pipe)
    return encode_ids([e for _, e in parts], [tokenize(t, texts) for t, _ in parts])


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning of one image -> (6,) float: original (h, w), crop (top, left), target (h, w)."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def added_cond(pooled: torch.Tensor | None, ids: torch.Tensor | None) -> dict:
    """UNet kwargs beyond the text states: ``{"added_cond_kwargs": {...}}`` for SDXL, ``{}`` for SD."""
    if pooled is None:
        return {}
    if ids is None:
        raise ValueError("an SDXL UNet call needs time_ids (B, 6) beside the pooled text embeddings")
    return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids.to(pooled.device, pooled.dtype)}}


def fingerprint_modules(pipe) -> list[torch.nn.Module]:
    """The frozen weights a customization depends on: UNet and every text encoder."""
    return [pipe.unet, *text_encoders(pipe)]


def require_family(pipe, supported: tuple[str, ...], what: str, alternatives: list[str] | None = None) -> str:
    """The pipeline's family, or ``ValueError`` naming what ``what`` supports (and what else would work)."""
    fam = family_of(pipe)
    if fam not in supported:
        names = " and ".join(FAMILY_NAMES[f] for f in supported)
        alt = f"; on {FAMILY_NAMES[fam]} use one of: {', '.join(alternatives)}" if alternatives else ""
        raise ValueError(f"{what} supports {names} models only, and this model is {FAMILY_NAMES[fam]}{alt}")
    return fam
