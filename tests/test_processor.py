"""The Infusion attn2 processor against a direct, slow implementation of the paper's Eq. 7."""

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from infusion.methods.infusion.processor import InfusionAttnProcessor, InfusionPlan
from infusion.core.placeholders import ConceptSpan


def _attention(seed=0, dim=24, text_dim=16, heads=3, head_dim=8):
    torch.manual_seed(seed)
    attn = Attention(query_dim=dim, cross_attention_dim=text_dim, heads=heads, dim_head=head_dim, bias=True)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn.eval()


def eq7_reference(attn, hs_f, text, deltas_at):
    """Paper Eq. 7, written out: C's Q/K are discarded, F's maps M_F are used, and the value of each
    concept token gets its residual: V' = V + E_obj Delta. hs_f (N, C), text (L, Ct);
    deltas_at: {position: Delta row (D,)} -> out_C (N, C)."""
    H = attn.heads
    q = attn.to_q(hs_f)  # F's queries (N, D)
    k = attn.to_k(text)  # (L, D)
    v = attn.to_v(text)  # (L, D)
    v2 = v.clone()
    for pos, row in deltas_at.items():
        v2[pos] = v2[pos] + row  # V' = V + E_obj Delta
    D = q.shape[1]
    d = D // H
    outs = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        m = torch.softmax(q[:, sl] @ k[:, sl].T / d**0.5, dim=-1)  # M_F[h] (N, L)
        outs.append(m @ v2[:, sl])
    return torch.cat(outs, dim=1) @ attn.to_out[0].weight.T + attn.to_out[0].bias


def test_c_rows_match_eq7_reference_and_ignore_c_hidden_state():
    attn = _attention()
    N, L = 10, 77
    hs_f = torch.randn(N, 24, dtype=torch.float64).float()
    hs_c = torch.randn(N, 24)  # C's own hidden state: must not matter
    text = torch.randn(L, 16)
    proc = InfusionAttnProcessor("layer")
    delta = torch.randn(2, 24)
    proc.deltas = {"bear": delta}
    plan = InfusionPlan.build("fused", 1, [0], [[ConceptSpan("bear", (5, 6))]])
    out = proc(attn, torch.stack([hs_f, hs_c]), torch.stack([text, text]), infusion=plan)
    with torch.no_grad():
        ref = eq7_reference(attn, hs_f, text, {5: delta[0], 6: delta[1]})
        base = AttnProcessor2_0()(attn, hs_f[None], text[None])[0]
    torch.testing.assert_close(out[1], ref, rtol=1e-5, atol=1e-5)
    # F rows: the stock SDPA processor (equal up to batch-size-dependent rounding of the CPU GEMM)
    torch.testing.assert_close(out[0], base, rtol=0, atol=1e-6)
    # a different C hidden state gives the same C output (Eq. 7 uses F's maps only)
    out2 = proc(attn, torch.stack([hs_f, torch.randn(N, 24)]), torch.stack([text, text]), infusion=plan)
    assert torch.equal(out[1], out2[1])


def test_residual_only_at_concept_positions_and_conditional_rows():
    attn = _attention(1)
    N = 6
    hs = torch.randn(2, N, 24)
    uncond, cond = torch.randn(77, 16), torch.randn(77, 16)
    text = torch.stack([uncond, cond, uncond, cond])
    proc = InfusionAttnProcessor("layer")
    proc.deltas = {"c": torch.randn(1, 24)}
    # rows [F_u, F_c, C_u, C_c]; only C_c references the concept (position 3)
    plan = InfusionPlan.build("fused", 2, [0, 1], [[], [ConceptSpan("c", (3,))]])
    out = proc(attn, torch.cat([hs, hs]), text, infusion=plan)
    assert torch.equal(out[2], out[0])  # C_uncond == F_uncond exactly
    assert not torch.allclose(out[3], out[1])
    # The update equals the map column at position 3 times Delta, projected by W_O (no bias):
    with torch.no_grad():
        ref = eq7_reference(attn, hs[1], cond, {3: proc.deltas["c"][0]})
    torch.testing.assert_close(out[3], ref, rtol=1e-5, atol=1e-5)
    # putting the residual at another position gives another output
    plan4 = InfusionPlan.build("fused", 2, [0, 1], [[], [ConceptSpan("c", (4,))]])
    out4 = proc(attn, torch.cat([hs, hs]), text, infusion=plan4)
    assert not torch.allclose(out4[3], out[3])


def test_zero_delta_c_equals_f_exactly_and_no_plan_is_stock():
    attn = _attention(2)
    hs, text = torch.randn(2, 5, 24), torch.randn(2, 77, 16)
    proc = InfusionAttnProcessor("layer")
    proc.deltas = {"c": torch.zeros(1, 24)}
    plan = InfusionPlan.build("fused", 2, [0, 1], [[ConceptSpan("c", (2,))], [ConceptSpan("c", (3,))]])
    out = proc(attn, torch.cat([hs, hs]), torch.cat([text, text]), infusion=plan)
    assert torch.equal(out[:2], out[2:])
    assert torch.equal(proc(attn, hs, text), AttnProcessor2_0()(attn, hs, text))


def test_record_then_inject_equals_fused():
    attn = _attention(3)
    hs, text = torch.randn(3, 7, 24), torch.randn(3, 77, 16)
    proc = InfusionAttnProcessor("L")
    proc.deltas = {"a": torch.randn(1, 24), "b": torch.randn(2, 24)}
    spans = [[ConceptSpan("a", (1,))], [ConceptSpan("b", (2, 3)), ConceptSpan("a", (5,))], []]
    fused = proc(attn, torch.cat([hs, hs]), torch.cat([text, text]),
                 infusion=InfusionPlan.build("fused", 3, [0, 1, 2], spans))
    plan = InfusionPlan.build("record", 3, [0, 1, 2], spans)
    f_out = proc(attn, hs, text, infusion=plan)
    plan.mode = "inject"
    c_out = proc(attn, torch.randn_like(hs), text, infusion=plan)
    assert torch.equal(f_out, fused[:3])
    torch.testing.assert_close(c_out, fused[3:], rtol=0, atol=1e-6)


def test_concept_order_does_not_change_the_sum():
    attn = _attention(4)
    hs, text = torch.randn(1, 9, 24), torch.randn(1, 77, 16)
    proc = InfusionAttnProcessor("L")
    proc.deltas = {"a": torch.randn(1, 24), "b": torch.randn(1, 24)}
    s1 = [[ConceptSpan("a", (2,)), ConceptSpan("b", (6,))]]
    s2 = [[ConceptSpan("b", (6,)), ConceptSpan("a", (2,))]]
    o1 = proc(attn, torch.cat([hs, hs]), torch.cat([text, text]), infusion=InfusionPlan.build("fused", 1, [0], s1))
    o2 = proc(attn, torch.cat([hs, hs]), torch.cat([text, text]), infusion=InfusionPlan.build("fused", 1, [0], s2))
    assert torch.equal(o1, o2)


def test_gradient_reaches_only_the_delta():
    attn = _attention(5)  # left trainable: the claim is about what the C pass backpropagates through
    hs, text = torch.randn(1, 4, 24), torch.randn(1, 77, 16)
    proc = InfusionAttnProcessor("L")
    delta = torch.zeros(1, 24, requires_grad=True)
    proc.deltas = {"a": delta}
    plan = InfusionPlan.build("record", 1, [0], [[ConceptSpan("a", (1,))]])
    with torch.no_grad():
        proc(attn, hs, text, infusion=plan)
    plan.mode = "inject"
    proc(attn, hs, text, infusion=plan).sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    # C never recomputes maps or values: Q, K and V get no gradient (W_O does: C's output passes through it)
    for lin in (attn.to_q, attn.to_k, attn.to_v):
        assert all(p.grad is None for p in lin.parameters())
    assert attn.to_out[0].weight.grad is not None


def test_install_processors_repeat_skips_module_walk_and_reinstalls_after_a_swap(tiny_pipe, monkeypatch):
    """A repeat install (one per generation) returns the same processors without walking the UNet; a UNet whose
    processors were swapped for stock ones gets Infusion processors again."""
    from infusion.methods.infusion.processor import cross_attention_layers, install_processors

    unet = tiny_pipe.unet
    first = install_processors(unet)
    assert set(first) == set(cross_attention_layers(unet)) and first
    walks = []
    real = type(unet).named_modules

    def counting(self, *a, **k):
        walks.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(type(unet), "named_modules", counting)
    again = install_processors(unet)
    assert walks == [] and all(again[n] is first[n] for n in first)
    unet.set_attn_processor(AttnProcessor2_0())
    walks.clear()
    fresh = install_processors(unet)
    assert walks and set(fresh) == set(first)
    assert all(isinstance(p, InfusionAttnProcessor) and p is not first[n] for n, p in fresh.items())
    assert all(m.processor is fresh[n] for n, m in cross_attention_layers(unet).items())
