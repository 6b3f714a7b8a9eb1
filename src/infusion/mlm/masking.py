"""Which tokens to mask, and the text encoder run with [MASK] in their place (DESIGN section 7).

Masking happens in the *input embedding* space: a forward hook on the text encoder's token
embedding swaps the masked rows for the learned [MASK] vector, so the encoder's own forward
(positions, causal mask, final norm) runs unchanged and gradients flow to whatever produced the
other rows: the token embedding matrix (TI, Custom Diffusion, DreamBooth), or an ``embed_fn`` the
method supplies (P+).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from infusion.core.placeholders import parse_prompt

EmbedFn = Callable[[torch.Tensor], torch.Tensor]  # input_ids (B, L) -> input embeddings (B, L, H)


@dataclass
class MLMBatch:
    """Tokenised prompts, padded to the longest.

    input_ids:      (B, L) long
    attention_mask: (B, L) long, 1 = real token (BOS, words, EOS), 0 = padding
    maskable:       (B, L) bool, True where a token may be masked: real, not special, not protected
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    maskable: torch.Tensor

    def to(self, device) -> "MLMBatch":
        return MLMBatch(self.input_ids.to(device), self.attention_mask.to(device), self.maskable.to(device))


def make_batch(
    ids: Sequence[Sequence[int]], tokenizer, protected: Sequence[Sequence[int]] | None = None
) -> MLMBatch:
    """Pad token id lists (each with BOS/EOS) into an ``MLMBatch``; ``protected`` lists, per row,
    positions that must never be masked (concept and class tokens)."""
    if not ids:
        raise ValueError("empty batch: give at least one prompt")
    L = max(len(x) for x in ids)
    B = len(ids)
    input_ids = torch.full((B, L), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    maskable = (attention_mask == 1) & ~torch.isin(input_ids, special)
    for i, pos in enumerate(protected or []):
        if pos:
            maskable[i, list(pos)] = False
    return MLMBatch(input_ids, attention_mask, maskable)


def tokenize_captions(captions: Sequence[str], tokenizer) -> list[list[int]]:
    """Token ids with BOS/EOS, truncated to the tokenizer's limit (77 for CLIP)."""
    enc = tokenizer(list(captions), truncation=True, max_length=tokenizer.model_max_length, add_special_tokens=True)
    return enc["input_ids"]


def tokenize_prompts(prompts: Sequence[str], concept_text: Mapping[str, str], tokenizer) -> MLMBatch:
    """Substitute each ``<name>`` by ``concept_text[name]`` (the method's concept reference, e.g.
    ``"<mycat>"`` for TI or ``"sks cat"`` for DreamBooth) and protect every token of it."""
    ids, protected = [], []
    for prompt in prompts:
        parsed = parse_prompt(prompt, concept_text, tokenizer)
        row = tokenize_captions([parsed.text], tokenizer)[0]
        ids.append(row)
        protected.append(sorted({p for span in parsed.spans for p in span.positions}))
    return make_batch(ids, tokenizer, protected)


def sample_mask(maskable: torch.Tensor, rate: float = 0.15, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask ``round(rate * n)`` (at least 1) of the ``n`` maskable tokens of every row, uniformly.

    maskable (B, L) bool -> mask (B, L) bool, a subset of ``maskable``. A fixed count per row (not
    a Bernoulli draw) keeps the rate exact for short prompts and never yields a row with nothing
    to predict while it has maskable tokens. ``rate`` 0.15 is BERT's and the paper's.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"mask rate must be in (0, 1], got {rate}")
    if maskable.dtype != torch.bool or maskable.dim() != 2:
        raise ValueError(f"maskable must be a (B, L) bool tensor, got {tuple(maskable.shape)} {maskable.dtype}")
    n = maskable.sum(1)  # (B,)
    k = torch.where(n > 0, torch.clamp(torch.round(n.float() * rate).long(), min=1), n)  # (B,)
    device = maskable.device if generator is None else generator.device
    scores = torch.rand(maskable.shape, generator=generator, device=device).to(maskable.device)  # (B, L)
    scores = scores.masked_fill(~maskable, 2.0)  # unmaskable tokens sort last
    ranks = scores.argsort(1).argsort(1)  # (B, L) rank of each token's score in its row
    return (ranks < k[:, None]) & maskable


def encode_masked(
    text_encoder,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    mask_embedding: torch.Tensor,
    embed_fn: EmbedFn | None = None,
) -> torch.Tensor:
    """Text encoder last hidden states (B, L, H) with the input embeddings at ``mask`` (B, L) replaced
    by ``mask_embedding`` (H,). ``embed_fn(input_ids) -> (B, L, H)`` replaces the token embedding
    lookup when given (methods that learn embeddings outside the embedding matrix)."""
    if mask.shape != input_ids.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from input_ids shape {tuple(input_ids.shape)}")
    module = text_encoder.get_input_embeddings()
    inside_embed_fn = False  # embed_fn may itself look up the embedding table: do not recurse

    def swap_masked(_module, args, output):  # output: (B, L, H)
        nonlocal inside_embed_fn
        if inside_embed_fn:
            return None  # keep the plain lookup
        if embed_fn is not None:
            inside_embed_fn = True
            try:
                output = embed_fn(args[0])
            finally:
                inside_embed_fn = False
            if output.shape[:2] != input_ids.shape:
                raise ValueError(f"embed_fn returned shape {tuple(output.shape)}, expected {tuple(input_ids.shape)} + (H,)")
        m = mask.to(output.device)[..., None]  # (B, L, 1)
        return torch.where(m, mask_embedding.to(device=output.device, dtype=output.dtype), output)

    handle = module.register_forward_hook(swap_masked)
    try:
        return text_encoder(input_ids=input_ids).last_hidden_state
    finally:
        handle.remove()
