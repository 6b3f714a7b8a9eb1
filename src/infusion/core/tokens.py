"""Learned token embeddings without touching the text encoder (TI, P+, Custom Diffusion, Perfusion).

A prompt writes ``<name>``; we put a single-token stand-in word in its place, tokenize, and a
forward hook on the text encoder's token-embedding layer swaps the stand-in's input embedding for
the learned vector. The text encoder's weights (and the tokenizer) stay bit-identical, and
gradients reach the learned vector only. Hand-written rather than diffusers' add-token-and-resize
(``load_textual_inversion``) so that training never mutates the base model; the exported files
are still in diffusers' textual-inversion format, and tests check that both routes give the same
text states.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from infusion.core.model_families import encode_ids, tokenize
from infusion.core.placeholders import ConceptSpan, parse_prompt

STAND_IN = "sks"  # one BPE token in the CLIP vocabulary; its embedding is always replaced


def input_embedding(text_encoder) -> torch.nn.Embedding:
    return text_encoder.get_input_embeddings()


def phrase_embedding(text_encoder, tokenizer, phrase: str) -> torch.Tensor:
    """Mean input embedding of ``phrase``'s tokens -> [H] (TI's initialisation from a word)."""
    ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"phrase {phrase!r} has no tokens")
    weight = input_embedding(text_encoder).weight
    return weight[torch.tensor(ids, device=weight.device)].detach().float().mean(0)


def locate(prompts: list[str], name: str, tokenizer) -> tuple[list[str], list[list[ConceptSpan]]]:
    """Replace ``<name>`` by the stand-in token; -> (texts, spans with one position each)."""
    parsed = [parse_prompt(p, {name: STAND_IN}, tokenizer) for p in prompts]
    return [p.text for p in parsed], [p.spans for p in parsed]


@contextmanager
def injected(text_encoder, mask: torch.Tensor, vectors: torch.Tensor):
    """While active, input embeddings at ``mask`` (B, L) bool become ``vectors`` (B, H) (one per row)."""
    layer = input_embedding(text_encoder)

    def hook(module, args, out):  # out (B, L, H)
        m = mask.to(out.device)[..., None]  # (B, L, 1)
        v = vectors.to(out.device, out.dtype)[:, None, :].expand_as(out)  # (B, L, H)
        return torch.where(m, v, out)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_with_token(text_encoder, tokenizer, prompts: list[str], name: str, vectors: torch.Tensor):
    """Text states of ``prompts`` with ``<name>`` carried by ``vectors``.

    vectors: (H,) one vector for every row, or (B, H) one per row (P+ stacks layers as rows).
    Returns (states (B, L, C), ids (B, L), spans).
    """
    states, _, ids, spans = encode_with_tokens([text_encoder], [tokenizer], prompts, name, [vectors])
    return states, ids, spans


def encode_with_tokens(text_encoders, tokenizers, prompts: list[str], name: str, vectors: list[torch.Tensor]):
    """``encode_with_token`` for one or two encoders (SDXL: one learned vector per encoder, each of its width).

    Returns (states (B, L, C), pooled (B, P) or None, ids of the first tokenizer (B, L), spans), the states and
    pooled embedding made as the family's pipeline makes them (``families.encode_ids``).
    """
    from contextlib import ExitStack

    texts, spans = locate(prompts, name, tokenizers[0])
    ids = [tokenize(t, texts) for t in tokenizers]  # (B, L) each; one BPE vocabulary, so the same positions
    mask = torch.zeros(ids[0].shape, dtype=torch.bool)
    for b, row in enumerate(spans):
        for s in row:
            mask[b, list(s.positions)] = True
    per_row = []
    for v in vectors:
        v = v[None].expand(len(prompts), -1) if v.ndim == 1 else v
        if v.shape[0] != len(prompts):
            raise ValueError(f"{v.shape[0]} token vectors for {len(prompts)} prompts")
        per_row.append(v)
    with ExitStack() as stack:
        for enc, v in zip(text_encoders, per_row):
            stack.enter_context(injected(enc, mask, v))
        states, pooled = encode_ids(list(text_encoders), ids)
    return states, pooled, ids[0].to(text_encoders[0].device), spans


def stand_in_embed_fn(text_encoder, tokenizer, vector: Callable[[], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Input embeddings for L_MLM (``infusion.mlm``'s ``embed_fn``): the plain lookup, with every
    stand-in token carried by ``vector()`` (H,), read at call time so the current value is used.
    ids (B, L) -> (B, L, H). Prompts write the concept as the stand-in (it is protected from masking)."""
    layer = input_embedding(text_encoder)
    (stand_in,) = tokenizer(STAND_IN, add_special_tokens=False)["input_ids"]

    def embed(ids: torch.Tensor) -> torch.Tensor:
        out = layer(ids)  # (B, L, H)
        v = vector().to(out.device, out.dtype)  # (H,)
        return torch.where((ids == stand_in)[..., None], v, out)

    return embed
