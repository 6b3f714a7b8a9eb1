"""Cross-attention whose keys and values a method makes itself (Custom Diffusion's BOS detach,
Perfusion's rank-one edits); queries, SDPA, output projection and residual are AttnProcessor2_0's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0


class KeyValueProcessor:
    """Base ``attn2`` processor. Subclasses implement ``keys_values(attn, text) -> (k, v)``, each
    (B, L, D), from the (normalised) text states (B, L, C_text), or return None for stock attention.
    hidden (B, N, C) -> (B, N, C). Masks, self-attention and 4-D inputs use AttnProcessor2_0."""

    def keys_values(self, attn, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        raise NotImplementedError

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        stock = encoder_hidden_states is None or hidden_states.ndim != 3 or attention_mask is not None
        text = None if stock else (attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states)
        kv = None if stock else self.keys_values(attn, text)
        if kv is None:
            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        k, v = kv
        q = attn.to_q(hidden_states)  # (B, N, D)
        B, H, D = q.shape[0], attn.heads, k.shape[-1]
        q, k, v = (t.view(B, -1, H, D // H).transpose(1, 2) for t in (q, k, v))  # (B, H, *, d)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, -1, D)  # (B, N, D)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor
