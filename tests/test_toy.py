"""The 2-D toy: Infusion's C stream leaves other concepts exact, methods train what they claim,
mode counting and the toy LFD."""

import pytest
import torch

from infusion.toy import data
from infusion.toy.experiment import make_customised, settings, tokens_for, toy_lfd
from infusion.toy.model import InfusionToy, ToyDenoiser


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return ToyDenoiser(vocab=5, dim=32).eval()


def _inputs(n=64, concept=1):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=g), torch.randint(0, 1000, (n,), generator=g), tokens_for(concept, n)


def test_infusion_zero_delta_equals_base_and_other_concepts_stay_exact(base):
    model = InfusionToy(base, concept=1)
    x, t, tok = _inputs(concept=0)  # tokens [0, 1]: the customised concept
    torch.testing.assert_close(model(x, t, tok), base(x, t, tok), rtol=0, atol=0)
    with torch.no_grad():
        for d in model.deltas:
            d.normal_()
    assert not torch.allclose(model(x, t, tok), base(x, t, tok))
    x, t, tok = _inputs(concept=2)  # another concept: the F stream, bit-identical
    assert torch.equal(model(x, t, tok), base(x, t, tok))


def test_infusion_toy_matches_a_slow_two_stream_reference(base):
    """InfusionToy's C rows (its inject branch) against Eq. 7 written out block by block: an F pass and a C
    pass side by side; in every block C takes F's maps and the value V' = V + Delta at the concept token."""
    import math

    from infusion.toy.model import fourier

    model = InfusionToy(base, concept=1)
    with torch.no_grad():
        for d in model.deltas:
            d.normal_()
    x, t, tok = _inputs(8, concept=0)  # tokens [0, 1]: the concept at position 1
    with torch.no_grad():
        e = base.embed(tok)
        temb = base.temb(fourier(t[:, None].float() / base.T, 8))
        hf = hc = base.inp(torch.cat([x, fourier(x, 8)], dim=1)) + temb
        for blk, delta in zip(base.blocks, model.deltas):
            a = blk.attn
            H = a.heads
            d = a.to_v.out_features // H
            q = a.to_q(blk.norm1(hf)).view(8, H, 1, d)  # F's queries: the maps are F's
            k = a.to_k(e).view(8, -1, H, d).transpose(1, 2)
            v = a.to_v(e).view(8, -1, H, d).transpose(1, 2)
            m = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)  # (B, H, 1, L)
            v_c = v.clone()
            v_c[:, :, 1] += delta.view(H, d)
            hf = hf + a.to_out((m @ v).reshape(8, -1))
            hc = hc + a.to_out((m @ v_c).reshape(8, -1))
            hf = hf + blk.mlp(blk.norm2(hf) + temb)
            hc = hc + blk.mlp(blk.norm2(hc) + temb)
        want = base.out(hc)
        got = model(x, t, tok)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, base.out(hf), atol=1e-3)  # the Deltas act


def test_infusion_update_is_rank_one_in_value_space(base):
    # Eq. 7: C's attention core = F's core + M_F[:, :, obj] * Delta, whatever C's hidden state.
    model = InfusionToy(base, concept=1)
    with torch.no_grad():
        for d in model.deltas:
            d.normal_()
    x, t, tok = _inputs(8, concept=0)
    records = []
    base(x, t, tok, record=records)
    attn = base.blocks[0].attn
    m, core = records[0]
    seen = []  # C's first-layer core, as the model's own inject path computes it (the input of to_out)
    hook = attn.to_out.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    try:
        with torch.no_grad():
            base(x, t, tok, inject=(records, list(model.deltas), 1))
    finally:
        hook.remove()
    want = seen[0]
    assert not torch.allclose(want, core, atol=1e-4)  # the Delta changed the core
    e = base.embed(tok)
    v = attn.to_v(e).view(8, 2, attn.heads, -1).transpose(1, 2).clone()  # (B, H, L, d)
    v[:, :, 1] += model.deltas[0].view(attn.heads, -1)  # V' = V + Delta at the concept token
    got = (m[:, :, None, :] @ v)[:, :, 0].reshape(core.shape)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,trained", [("full", None), ("kv", ("to_k", "to_v")), ("infusion", ("deltas",))])
def test_methods_train_only_their_parameters(base, method, trained):
    model, params = make_customised(base, method, concept=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    x, t, tok = _inputs(concept=0)
    model(x, t, tok).pow(2).mean().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    if trained is None:
        assert len(changed) > 0.5 * len(before)
    else:
        assert changed and all(any(k in n for k in trained) for n in changed)
        # make_customised, not this test, decides what trains: exactly the parameters it returns
        assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}


def test_count_modes_and_segments():
    g = torch.Generator().manual_seed(0)
    centres = data.grid_centres()
    assert centres.shape == (25, 2) and torch.allclose(centres.mean(0), torch.zeros(2))
    all_modes = data.class_25_modes().sample(2000, g)
    assert data.count_modes(all_modes, centres) == 25
    five = data.class_25_target(data.DIAGONAL).sample(2000, g)
    assert data.count_modes(five, centres) == 5
    seg = data.Segments(torch.zeros(1, 2), length=1.0, jitter=0.0).sample(500, g)
    assert seg[:, 1].abs().max() < 1e-6 and seg[:, 0].abs().max() <= 0.5


def test_toy_lfd_zero_for_infusion_positive_for_full(base):
    s = settings()["agnostic"]
    infusion, _ = make_customised(base, "infusion", s.customised)
    with torch.no_grad():
        for d in infusion.deltas:
            d.normal_()
    assert toy_lfd(base, infusion, s, n=50).mean == 0.0
    full, _ = make_customised(base, "full", s.customised)
    with torch.no_grad():
        full.out[1].bias.add_(0.1)
    r = toy_lfd(base, full, s, n=50)
    assert r.mean == pytest.approx(0.5 * 2 * 0.01, rel=1e-4)  # 1/2 * (0.1^2 + 0.1^2) per sample
