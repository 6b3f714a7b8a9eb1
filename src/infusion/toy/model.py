"""A tiny text-conditioned noise predictor for 2-D points: a miniature of SD's UNet.

Point features play the image tokens (one query per point), token embeddings play the text
states; every block has a cross-attention (Q from the point, K/V from the tokens, as SD's
``attn2``) and an MLP. The Infusion C stream is implemented as in DESIGN section 1: it reuses F's
maps and adds ``M_F[:, :, obj] * Delta`` to F's attention core, never reading its own hidden state.

Shapes: B points, L tokens, D width, H heads, d = D / H.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def fourier(x: torch.Tensor, n: int = 8) -> torch.Tensor:
    """x [B, k] -> [B, 2*n*k] sin/cos features at frequencies 2^0..2^(n-1) (pi-scaled)."""
    f = (2.0 ** torch.arange(n, device=x.device)) * math.pi / 4
    a = x[..., None] * f  # (B, k, n)
    return torch.cat([a.sin(), a.cos()], dim=-1).flatten(1)


class CrossAttention(nn.Module):
    """Q from point features [B, D], K/V from tokens [B, L, Dt]; ``to_out`` = W_O, b_O."""

    def __init__(self, dim: int, tok_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(tok_dim, dim, bias=False)
        self.to_v = nn.Linear(tok_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def maps_and_core(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> maps M [B, H, L] and core M V [B, D] (before W_O)."""
        B, D = h.shape
        H, d = self.heads, D // self.heads
        q = self.to_q(h).view(B, H, 1, d)  # (B, H, 1, d)
        k = self.to_k(e).view(B, -1, H, d).transpose(1, 2)  # (B, H, L, d)
        v = self.to_v(e).view(B, -1, H, d).transpose(1, 2)  # (B, H, L, d)
        m = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)  # (B, H, 1, L)
        return m[:, :, 0], (m @ v).reshape(B, D)

    def forward(self, h, e):
        return self.to_out(self.maps_and_core(h, e)[1])


class Block(nn.Module):
    def __init__(self, dim: int, tok_dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, tok_dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))


class ToyDenoiser(nn.Module):
    """eps_theta(x_t [B, 2], t [B] long, tokens [B, L] long) -> eps [B, 2]."""

    def __init__(self, vocab: int, dim: int = 64, tok_dim: int = 32, heads: int = 4, depth: int = 3, T: int = 1000):
        super().__init__()
        self.T = T
        self.embed = nn.Embedding(vocab, tok_dim)  # the "text encoder": token -> state
        self.inp = nn.Linear(2 + 32, dim)
        self.temb = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, tok_dim, heads) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2))

    def cross_attentions(self) -> list[CrossAttention]:
        return [b.attn for b in self.blocks]

    def forward(self, x, t, tokens, record: list | None = None, inject: tuple | None = None):
        """``record``: list to receive (maps [B, H, L], core [B, D]) per layer (F stream).
        ``inject``: (records, deltas [depth] x [D], obj position) -> C stream (Infusion, Eq. 7)."""
        e = self.embed(tokens)  # (B, L, Dt)
        temb = self.temb(fourier(t[:, None].float() / self.T, 8))  # (B, D)
        h = self.inp(torch.cat([x, fourier(x, 8)], dim=1)) + temb  # (B, D)
        for i, blk in enumerate(self.blocks):
            if inject is None:
                m, core = blk.attn.maps_and_core(blk.norm1(h), e)
                if record is not None:
                    record.append((m, core))
            else:
                records, deltas, obj = inject
                m, core = records[i]  # F's maps and core: C never computes its own (Eq. 7)
                H = m.shape[1]
                upd = m[:, :, obj, None] * deltas[i].view(1, H, -1)  # (B, H, d)
                core = core + upd.reshape(core.shape)
            h = h + blk.attn.to_out(core)
            h = h + blk.mlp(blk.norm2(h) + temb)
        return self.out(h)


class InfusionToy(nn.Module):
    """The Infusion customised toy model: frozen ``base``, one Delta [D] per cross-attention for
    the concept token ``concept``. Rows whose tokens do not contain the concept run F alone."""

    def __init__(self, base: ToyDenoiser, concept: int):
        super().__init__()
        self.base, self.concept = base, concept
        base.requires_grad_(False)
        self.deltas = nn.ParameterList(nn.Parameter(torch.zeros(a.to_v.out_features)) for a in base.cross_attentions())

    def forward(self, x, t, tokens):
        records: list = []
        eps = self.base(x, t, tokens, record=records)  # F stream
        has = tokens == self.concept  # (B, L)
        rows = has.any(1)
        if not rows.any():
            return eps
        obj = int(has.nonzero()[0, 1])  # the toy's prompts hold the concept at one position
        sub = [(m[rows], c[rows]) for m, c in records]
        c_eps = self.base(x[rows], t[rows], tokens[rows], inject=(sub, list(self.deltas), obj))
        out = eps.clone()
        out[rows] = c_eps
        return out
