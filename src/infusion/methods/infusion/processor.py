"""The Infusion cross-attention processor (DESIGN section 1, paper Eq. 6-9).

Two streams share every frozen weight. F (foundational) is the base model. C (customised) reuses
F's attention maps in every ``attn2`` and adds a learned residual ``Delta`` to the concept
token's value, so (paper Eq. 7 with V' = V + E_obj Delta):

    out_C = out_F + concat_h( M_F[h, :, obj] (outer) Delta[h] ) W_O

C's ``attn2`` output never depends on C's own hidden state: C needs no Q, K or softmax of its
own. This processor computes the F rows with SDPA (bit-identical to diffusers'
``AttnProcessor2_0``), the concept columns of F's maps with an explicit softmax, and derives the
C rows from them with a rank-n update.

Variants beyond the paper (each a concept's training option, stored in its file):
- ``query``: Delta + q_C A B, a per-pixel term of C's own query (``query_terms``).
- ``own maps`` (``own_maps``): the concept's residual is placed by C's own map of its tokens,
  out_C = out_F + concat_h( M_C[h, :, obj] (outer) Delta[h] ) W_O, with M_C = softmax(Q_C K^T) from C's own
  hidden state and the same text (the concept's key is the class word's: Perfusion's key lock). Everything
  else is F's (its output, every other column of its maps); but C's output now depends on C's own image at
  the concept's columns, which the paper's design rules out. Zero Delta and prompts without the concept stay
  bit-identical to the base model; concepts still add, each placed by its own kind of map.

Shapes (letters used in comments):
    B  batch rows      N  image tokens (h*w)     L  text tokens (77)
    H  heads           d  head dim               D  inner dim = H*d (320/640/1280 in SD1.x)
    T  concept tokens injected per C row (padded)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from infusion.core.placeholders import ConceptSpan


class SelfAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, unchanged, that also accepts (and ignores) ``infusion``.

    Installed on ``attn1`` so that passing ``cross_attention_kwargs={"infusion": plan}`` through
    the UNet does not log "not expected" warnings on every self-attention call.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, infusion=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


@dataclass
class InfusionPlan:
    """What one UNet call does with its batch rows; passed as ``cross_attention_kwargs["infusion"]``.

    mode:
        ``"fused"``  rows ``[F rows (n_f), C rows (n_c)]`` in one call (inference);
        ``"record"`` every row is an F row; store what C rows need (training, no grad);
        ``"inject"`` every row is a C row; read what ``"record"`` stored (training, with grad).
    c_source:  LongTensor [n_c], the F row each C row derives its maps and F output from.
    positions: LongTensor [n_c, T], token positions receiving a residual (padding: 0).
    slots:     per C row, per padded token, ``(concept name, Delta row)`` or ``None`` for padding.
    records:   layer name -> (core_F [n_c, N, D], maps [n_a, H, N, T]) filled in record mode.
    map_sink:  when a dict, every call adds F's maps averaged over heads (n_a, N, T) under the layer's name
               (what the web page's attention view and ``InfusionPipeline(..., return_attention=True)`` show).

    Only the ``n_a`` *active* C rows (those with at least one concept token) need F's maps and get
    a residual; the others (e.g. ``C_uncond``) are copies of their F row.
    """

    mode: str
    n_f: int
    c_source: torch.Tensor
    positions: torch.Tensor
    slots: list[list[tuple[str, int] | None]]
    records: dict = field(default_factory=dict)
    map_sink: dict | None = None  # layer -> running sum of F's maps at the concept columns, (n_a, N, T) (head mean)

    def __post_init__(self):
        if self.mode not in ("fused", "record", "inject"):
            raise ValueError(f"InfusionPlan.mode must be fused, record or inject, got {self.mode!r}")
        if self.positions.shape[0] != self.c_source.shape[0] or len(self.slots) != self.c_source.shape[0]:
            raise ValueError("c_source, positions and slots must have one entry per C row")

    @property
    def n_c(self) -> int:
        return int(self.c_source.shape[0])

    @property
    def active(self) -> torch.Tensor:
        """LongTensor [n_a]: C rows that inject at least one concept token."""
        if not hasattr(self, "_active"):
            self._active = torch.tensor(
                [i for i, row in enumerate(self.slots) if any(s is not None for s in row)], dtype=torch.long
            )
        return self._active

    @classmethod
    def build(cls, mode: str, n_f: int, c_source: list[int], spans: list[list[ConceptSpan]]) -> "InfusionPlan":
        """Plan from each C row's concept spans (``prompts.parse_prompt(...).spans``).

        Tokens are sorted by position, so the residual sum does not depend on the order in which
        concepts were listed (composition is order-free, exactly).
        """
        per_row = []
        for row_spans in spans:
            toks = sorted((p, (s.name, j)) for s in row_spans for j, p in enumerate(s.positions))
            if len({p for p, _ in toks}) != len(toks):
                raise ValueError("two concepts claim the same token position")
            per_row.append(toks)
        T = max([len(t) for t in per_row] + [1])
        positions = torch.zeros(len(per_row), T, dtype=torch.long)
        slots: list[list[tuple[str, int] | None]] = []
        for i, toks in enumerate(per_row):
            positions[i, : len(toks)] = torch.tensor([p for p, _ in toks], dtype=torch.long)
            slots.append([s for _, s in toks] + [None] * (T - len(toks)))
        return cls(mode, n_f, torch.tensor(c_source, dtype=torch.long), positions, slots)

    def concepts_used(self) -> set[str]:
        return {s[0] for row in self.slots for s in row if s is not None}


class InfusionAttnProcessor:
    """``attn2`` processor: F rows as the base model, C rows derived from F (Eq. 7, Eq. 9).

    ``deltas`` maps a concept name to this layer's residual, shape [n_tokens, D]; it may hold
    ``nn.Parameter`` objects (training) or plain tensors (inference). ``query_terms`` maps a concept
    of the ``query`` variant to its ``(A [n_tokens, D, r], B [n_tokens, r, D])``; ``own_maps`` names the
    concepts of the own-maps variant.
    """

    def __init__(self, layer_name: str):
        self.layer_name = layer_name
        self.deltas: dict[str, torch.Tensor] = {}
        self.query_terms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.own_maps: set[str] = set()
        self._base = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        infusion: InfusionPlan | None = None,
    ) -> torch.Tensor:
        if infusion is None or (infusion.mode == "fused" and infusion.n_c == 0):
            return self._base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is None:
            raise ValueError(f"{self.layer_name}: InfusionAttnProcessor belongs on cross-attention (attn2) layers")
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError(f"{self.layer_name}: spatial_norm/group_norm attention is not supported")

        residual = hidden_states  # (B, N, C) or (B, C, h, w)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, ch, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, h * w).transpose(1, 2)  # (B, N, C)

        plan = infusion
        if plan.mode == "inject":
            core_src, maps = plan.records[self.layer_name]  # (B, N, D), (n_a, H, N, T)
            maps = self._with_own_maps(attn, hidden_states, encoder_hidden_states, attention_mask, maps, plan)
            queries = self._c_queries(attn, hidden_states, plan)  # (n_a, N, D) or None
            core = self._c_core(attn, core_src, maps, queries, plan)  # (B, N, D)
        else:
            n_f = plan.n_f if plan.mode == "fused" else hidden_states.shape[0]
            core_f, maps = self._f_core(
                attn, hidden_states[:n_f], encoder_hidden_states[:n_f], attention_mask, plan
            )  # (n_f, N, D), (n_a, H, N, T)
            core_src = core_f[plan.c_source]  # (n_c, N, D)
            if plan.mode == "record":
                plan.records[self.layer_name] = (core_src, maps)
                core = core_f
            else:
                maps = self._with_own_maps(attn, hidden_states[n_f:], encoder_hidden_states[n_f:], attention_mask,
                                           maps, plan)
                queries = self._c_queries(attn, hidden_states[n_f:], plan)
                core = torch.cat([core_f, self._c_core(attn, core_src, maps, queries, plan)], dim=0)  # (B, N, D)

        if plan.mode == "fused":  # F rows through W_O on their own: a BLAS may round a row differently in a larger
            # batch, and F rows must equal the stock processor's on the same F batch bit for bit
            out = torch.cat([attn.to_out[1](attn.to_out[0](core[:n_f])), attn.to_out[1](attn.to_out[0](core[n_f:]))])
        else:
            out = attn.to_out[1](attn.to_out[0](core))  # (B, N, C): W_O, b_O, dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(residual.shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _f_core(self, attn, hs, ehs, attention_mask, plan):
        """F rows exactly as ``AttnProcessor2_0`` up to W_O, plus F's maps at the concept columns.

        hs (B, N, C), ehs (B, L, C_text) -> core (B, N, D), maps (n_a, H, N, T) for the active C rows.
        """
        B, L = ehs.shape[0], ehs.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, L, B)
            attention_mask = attention_mask.view(B, attn.heads, -1, attention_mask.shape[-1])  # (B, H, 1|N, L)
        q, k, v = self._heads(attn, hs, ehs)  # (B, H, N, d), (B, H, L, d), (B, H, L, d)
        D = q.shape[1] * q.shape[-1]
        core = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        core = core.transpose(1, 2).reshape(B, -1, D).to(q.dtype)  # (B, N, D)

        maps = self._concept_maps(attn, q, k, attention_mask, plan.c_source, plan)  # M_F[h, :, obj]
        if plan.map_sink is not None:
            m = maps.float().mean(1).detach()  # (n_a, N, T)
            plan.map_sink[self.layer_name] = plan.map_sink.get(self.layer_name, 0) + m
        return core, maps

    @staticmethod
    def _heads(attn, hs, ehs, value: bool = True):
        """Q, K (and V) per head as ``AttnProcessor2_0`` makes them (norm_cross, norm_q, norm_k included).
        hs (B, N, C), ehs (B, L, C_text) -> q (B, H, N, d), k (B, H, L, d), v (B, H, L, d) or None."""
        B, H = hs.shape[0], attn.heads
        if attn.norm_cross:
            ehs = attn.norm_encoder_hidden_states(ehs)

        def split(x):  # (B, S, D) -> (B, H, S, d)
            return x.view(B, -1, H, x.shape[-1] // H).transpose(1, 2)

        q, k = split(attn.to_q(hs)), split(attn.to_k(ehs))
        v = split(attn.to_v(ehs)) if value else None
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        return q, k, v

    @staticmethod
    def _concept_maps(attn, q, k, attention_mask, rows, plan):
        """Explicit softmax over all L keys, kept only at the concept columns. q (B, H, N, d), k (B, H, L, d),
        attention_mask (B, H, 1|N, L) or None; ``rows`` [n_c]: the row of q/k/mask each C row reads
        -> (n_a, H, N, T) for the active C rows."""
        active = plan.active.to(q.device)
        src = rows.to(q.device)[active]
        qs, ks = q[src].float(), k[src].float()  # (n_a, H, N, d), (n_a, H, L, d)
        scores = qs @ ks.transpose(-1, -2) * attn.scale  # (n_a, H, N, L)
        if attention_mask is not None:
            scores = scores + attention_mask[src].float()
        probs = scores.softmax(dim=-1)
        pos = plan.positions.to(q.device)[active][:, None, None, :].expand(-1, q.shape[1], probs.shape[2], -1)
        return probs.gather(-1, pos).to(q.dtype)  # (n_a, H, N, T)

    def _with_own_maps(self, attn, hs_c, ehs_c, attention_mask, maps_f, plan):
        """The own-maps variant: F's maps (n_a, H, N, T) with the slots of own-maps concepts replaced by C's own
        maps, softmax(Q_C K^T) from the C rows' hidden states hs_c (n_c, N, C) and text ehs_c (n_c, L, C_text)."""
        names = [n for n in plan.concepts_used() if n in self.own_maps]
        if not names:
            return maps_f
        n_c, L = hs_c.shape[0], ehs_c.shape[1]
        active = plan.active.to(hs_c.device)  # only the active C rows need Q and K
        if attention_mask is not None:  # the mask of the whole call; the C rows are its last n_c
            attention_mask = attn.prepare_attention_mask(attention_mask, L, attention_mask.shape[0])
            attention_mask = attention_mask.view(-1, attn.heads, attention_mask.shape[-2], L)[-n_c:][active]
        q, k, _ = self._heads(attn, hs_c[active], ehs_c[active], value=False)  # (n_a, H, N, d), (n_a, H, L, d)
        rows = torch.zeros(n_c, dtype=torch.long, device=active.device)
        rows[active] = torch.arange(active.numel(), device=active.device)  # C row -> its row of q and k
        own = self._concept_maps(attn, q, k, attention_mask, rows, plan)  # (n_a, H, N, T)
        sel = torch.tensor([[s is not None and s[0] in names for s in plan.slots[i]] for i in plan.active.tolist()],
                           dtype=torch.bool, device=own.device)  # (n_a, T)
        return torch.where(sel[:, None, None, :], own, maps_f.to(own.dtype))

    def _c_queries(self, attn, hs_c, plan):
        """The ``query`` variant's input: the active C rows' own queries (n_a, N, D), heads concatenated;
        None when no concept of the call has query terms. hs_c: the C rows' hidden states (n_c, N, C)."""
        if not any(n in self.query_terms for n in plan.concepts_used()):
            return None
        q = attn.to_q(hs_c[plan.active.to(hs_c.device)])  # (n_a, N, D)
        if attn.norm_q is not None:
            H = attn.heads
            q = attn.norm_q(q.view(q.shape[0], -1, H, q.shape[-1] // H).transpose(1, 2)).transpose(1, 2).flatten(2)
        return q

    def _c_core(self, attn, core_src, maps, queries, plan):
        """C rows: core_F + M_F[:, :, obj] @ (Delta + q A B), per head. core_src (n_c, N, D) -> (n_c, N, D)."""
        n_c, N, D = core_src.shape
        active = plan.active.to(core_src.device)
        if active.numel() == 0:
            return core_src
        H, n_a = attn.heads, active.numel()
        delta = self._stacked_deltas(plan, D, core_src)  # (n_a, T, D)
        T = delta.shape[1]
        delta = delta.view(n_a, T, H, D // H).transpose(1, 2)  # (n_a, H, T, d)
        upd = maps.to(delta.dtype) @ delta  # (n_a, H, N, d)
        if queries is not None:  # the query variant: a per-pixel value residual (n_a, T, N, D)
            a, b = self._stacked_query_terms(plan, D, core_src)  # (n_a, T, D, r), (n_a, T, r, D)
            z = torch.einsum("and,atdr->atnr", queries.to(a.dtype), a)  # (n_a, T, N, r)
            dq = torch.einsum("atnr,atre->atne", z, b)
            dq = dq.view(n_a, T, N, H, D // H).permute(0, 3, 2, 1, 4)  # (n_a, H, N, T, d)
            upd = upd + (maps.to(dq.dtype).unsqueeze(-1) * dq).sum(3)  # (n_a, H, N, d)
        upd = upd.transpose(1, 2).reshape(n_a, N, D).to(core_src.dtype)  # (n_a, N, D)
        return core_src.index_add(0, active, upd)  # inactive rows: exact copies of F

    def _slot_index(self, plan: InfusionPlan, names: list[str], sizes: dict[str, int], device) -> torch.Tensor:
        """(n_a, T) index into a table ``[zero row, rows of names[0], rows of names[1], ...]``."""
        offset, total = {}, 1
        for n in names:
            offset[n], total = total, total + sizes[n]
        return torch.tensor(
            [[0 if s is None or s[0] not in offset else offset[s[0]] + s[1] for s in plan.slots[i]]
             for i in plan.active.tolist()],
            dtype=torch.long, device=device,
        )

    def _stacked_query_terms(self, plan: InfusionPlan, D: int, like: torch.Tensor):
        """This layer's (A, B) for every (active C row, padded token) slot: (n_a, T, D, r), (n_a, T, r, D);
        zero for padding and for concepts without query terms."""
        names = sorted(n for n in plan.concepts_used() if n in self.query_terms)
        r = max(self.query_terms[n][0].shape[-1] for n in names)
        za, zb = like.new_zeros(1, D, r), like.new_zeros(1, r, D)
        ta, tb = [za], [zb]
        for n in names:
            a, b = (t.to(device=like.device, dtype=like.dtype) for t in self.query_terms[n])
            if a.shape[1] != D or b.shape[2] != D:
                raise ValueError(f"{self.layer_name}: query terms of <{n}> have width {a.shape[1]}, layer needs {D}")
            pad = r - a.shape[-1]  # concepts of different ranks: pad with zeros (exact)
            ta.append(F.pad(a, (0, pad)))
            tb.append(F.pad(b, (0, 0, 0, pad)))
        index = self._slot_index(plan, names, {n: self.query_terms[n][0].shape[0] for n in names}, like.device)
        return torch.cat(ta)[index], torch.cat(tb)[index]

    def _stacked_deltas(self, plan: InfusionPlan, D: int, like: torch.Tensor) -> torch.Tensor:
        """Gather this layer's Delta rows for every (active C row, padded token) slot -> (n_a, T, D)."""
        names = sorted(plan.concepts_used())
        missing = [n for n in names if n not in self.deltas]
        if missing:
            raise KeyError(f"{self.layer_name}: no Delta loaded for concept(s) {missing}")
        zero = torch.zeros(1, D, dtype=like.dtype, device=like.device)
        table, offset = [zero], {}
        for n in names:
            offset[n] = sum(t.shape[0] for t in table)
            delta = self.deltas[n]
            if delta.shape[-1] != D:
                raise ValueError(f"{self.layer_name}: Delta for <{n}> has width {delta.shape[-1]}, layer needs {D}")
            table.append(delta.to(device=like.device, dtype=like.dtype))
        table = torch.cat(table, dim=0)  # (1 + sum n_tokens, D)
        index = torch.tensor(
            [[0 if s is None else offset[s[0]] + s[1] for s in plan.slots[i]] for i in plan.active.tolist()],
            dtype=torch.long,
            device=like.device,
        )  # (n_a, T)
        return table[index]


def cross_attention_layers(unet) -> dict[str, Attention]:
    """``attn2`` modules of a UNet by diffusers module name, e.g.
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn2`` -> Attention."""
    layers = {
        name: m
        for name, m in unet.named_modules()
        if isinstance(m, Attention) and m.is_cross_attention and name.endswith("attn2")
    }
    if not layers:
        raise ValueError("this UNet has no cross-attention (attn2) layers; Infusion needs a text-conditioned UNet")
    return layers


def layer_widths(unet) -> dict[str, int]:
    """Value width D of every ``attn2`` (asked from the module: ``to_v.out_features``)."""
    return {name: m.to_v.out_features for name, m in cross_attention_layers(unet).items()}


def install_processors(unet) -> dict[str, InfusionAttnProcessor]:
    """Put ``InfusionAttnProcessor`` on every ``attn2`` and ``SelfAttnProcessor`` elsewhere.

    Idempotent: returns the existing Infusion processors when already installed. The layers found are kept
    on the UNet (``_infusion_layers``), so a repeat call (one per generation) checks each layer's processor
    instead of walking every module twice (~30 ms on SDXL).
    """
    cached = getattr(unet, "_infusion_layers", None)
    if cached is not None and all(isinstance(m.processor, InfusionAttnProcessor) for m in cached.values()):
        return {name: m.processor for name, m in cached.items()}
    existing = {n[: -len(".processor")]: p for n, p in unet.attn_processors.items() if isinstance(p, InfusionAttnProcessor)}
    layers = cross_attention_layers(unet)
    object.__setattr__(unet, "_infusion_layers", layers)  # a plain attribute: no submodule registration
    if set(existing) == set(layers):
        return existing
    procs = {}
    mapping = {}
    for key in unet.attn_processors:
        name = key[: -len(".processor")]
        if name in layers:
            procs[name] = InfusionAttnProcessor(name)
            mapping[key] = procs[name]
        else:
            mapping[key] = SelfAttnProcessor()
    unet.set_attn_processor(mapping)
    return procs


def infusion_processors(unet) -> dict[str, InfusionAttnProcessor]:
    """The installed Infusion processors by layer name (empty if none)."""
    return {n[: -len(".processor")]: p for n, p in unet.attn_processors.items() if isinstance(p, InfusionAttnProcessor)}
