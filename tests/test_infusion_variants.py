"""Infusion's variants beyond the paper (``residual=query``, ``t_max``, ``maps=own``): they keep the guarantees
(zero residual == base, placeholder-free prompts == base, concepts add; F's maps except for ``maps=own``, which
gives that one up on purpose) and do what they say."""

import pytest
import torch

from infusion.methods.infusion.processor import InfusionAttnProcessor, InfusionPlan
from infusion.core.placeholders import ConceptSpan
from diffusers.models.attention_processor import AttnProcessor2_0

from test_processor import _attention, eq7_reference  # the same small random attn2 layer; Eq. 7 written out


def query_reference(attn, hs_f, hs_c, text, pos, delta, a, b):
    """Slow reference: F's maps, value of token ``pos`` replaced per pixel by V + Delta + (q_C(u) A) B,
    q_C = C's own query. hs_f, hs_c (N, C); delta (D,); a (D, r); b (r, D) -> out_C (N, C)."""
    H = attn.heads
    q_f, q_c = attn.to_q(hs_f), attn.to_q(hs_c)  # (N, D)
    k, v = attn.to_k(text), attn.to_v(text)  # (L, D)
    D = q_f.shape[1]
    d = D // H
    rows = []
    for u in range(hs_f.shape[0]):
        v2 = v.clone()
        v2[pos] = v2[pos] + delta + (q_c[u] @ a) @ b
        outs = []
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            m = torch.softmax(q_f[u, sl] @ k[:, sl].T / d**0.5, dim=-1)  # F's map, pixel u (L,)
            outs.append(m @ v2[:, sl])
        rows.append(torch.cat(outs))
    return torch.stack(rows) @ attn.to_out[0].weight.T + attn.to_out[0].bias


def test_query_variant_matches_a_slow_reference_and_uses_f_maps():
    attn = _attention()
    N = 6
    hs_f, hs_c, text = torch.randn(N, 24), torch.randn(N, 24), torch.randn(77, 16)
    proc = InfusionAttnProcessor("L")
    delta, a, b = torch.randn(1, 24), torch.randn(1, 24, 3), torch.randn(1, 3, 24)
    proc.deltas, proc.query_terms = {"c": delta}, {"c": (a, b)}
    plan = InfusionPlan.build("fused", 1, [0], [[ConceptSpan("c", (4,))]])
    out = proc(attn, torch.stack([hs_f, hs_c]), torch.stack([text, text]), infusion=plan)
    with torch.no_grad():
        ref = query_reference(attn, hs_f, hs_c, text, 4, delta[0], a[0], b[0])
    torch.testing.assert_close(out[1], ref, rtol=1e-4, atol=1e-4)
    # the per-pixel term reads C's own query: another C hidden state gives another output
    out2 = proc(attn, torch.stack([hs_f, torch.randn(N, 24)]), torch.stack([text, text]), infusion=plan)
    assert not torch.allclose(out2[1], out[1])


def test_query_variant_with_zero_b_and_zero_delta_is_f_bit_for_bit():
    attn = _attention(1)
    hs, text = torch.randn(2, 5, 24), torch.randn(2, 77, 16)
    proc = InfusionAttnProcessor("L")
    proc.deltas = {"c": torch.zeros(1, 24)}
    proc.query_terms = {"c": (torch.randn(1, 24, 4), torch.zeros(1, 4, 24))}  # A random, B zero: the initialisation
    plan = InfusionPlan.build("fused", 2, [0, 1], [[ConceptSpan("c", (2,))], [ConceptSpan("c", (3,))]])
    out = proc(attn, torch.cat([hs, torch.randn_like(hs)]), torch.cat([text, text]), infusion=plan)
    assert torch.equal(out[:2], out[2:])


def test_query_and_plain_concepts_compose_order_free_and_record_inject_matches_fused():
    attn = _attention(2)
    hs, text = torch.randn(2, 7, 24), torch.randn(2, 77, 16)
    proc = InfusionAttnProcessor("L")
    proc.deltas = {"a": torch.randn(1, 24), "b": torch.randn(2, 24)}
    proc.query_terms = {"b": (torch.randn(2, 24, 2), torch.randn(2, 2, 24))}  # b: query variant; a: plain
    spans = [[ConceptSpan("b", (2, 3)), ConceptSpan("a", (6,))], [ConceptSpan("a", (1,))]]
    c_hs = torch.randn_like(hs)
    fused = proc(attn, torch.cat([hs, c_hs]), torch.cat([text, text]), infusion=InfusionPlan.build("fused", 2, [0, 1], spans))
    swapped = [[ConceptSpan("a", (6,)), ConceptSpan("b", (2, 3))], [ConceptSpan("a", (1,))]]
    fused2 = proc(attn, torch.cat([hs, c_hs]), torch.cat([text, text]), infusion=InfusionPlan.build("fused", 2, [0, 1], swapped))
    assert torch.equal(fused, fused2)
    plan = InfusionPlan.build("record", 2, [0, 1], spans)
    proc(attn, hs, text, infusion=plan)
    plan.mode = "inject"
    torch.testing.assert_close(proc(attn, c_hs, text, infusion=plan), fused[2:], rtol=0, atol=1e-6)
    # the sum: a's and b's updates add (each alone, minus F, summed == both)
    only = {}
    for name in ("a", "b"):
        sp = [[s for s in row if s.name == name] for row in spans]
        o = proc(attn, torch.cat([hs, c_hs]), torch.cat([text, text]), infusion=InfusionPlan.build("fused", 2, [0, 1], sp))
        only[name] = o[2:] - o[:2]
    torch.testing.assert_close(fused[2:] - fused[:2], only["a"] + only["b"], rtol=1e-5, atol=1e-5)


def own_maps_reference(attn, hs_f, hs_c, text, deltas_at):
    """Slow reference of maps=own: F's output (Eq. 7 with no residual) + each concept token's Delta placed by C's own map
    softmax(Q_C K^T)[:, pos] per head, through W_O. hs_f, hs_c (N, C); deltas_at {position: (D,)} -> out_C (N, C)."""
    H = attn.heads
    q_c, k = attn.to_q(hs_c), attn.to_k(text)
    d = k.shape[1] // H
    upd = torch.zeros(hs_c.shape[0], k.shape[1])
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        m = torch.softmax(q_c[:, sl] @ k[:, sl].T / d**0.5, dim=-1)  # C's own map (N, L)
        for pos, row in deltas_at.items():
            upd[:, sl] += m[:, pos:pos + 1] * row[sl]
    return eq7_reference(attn, hs_f, text, {}) + upd @ attn.to_out[0].weight.T


def test_own_maps_place_delta_with_c_own_map_and_keep_f_output():
    """maps=own: C's row is F's output + Delta placed by C's own map of the concept token; F's rows are the stock
    processor's, bit for bit; the paper's processor would place the same Delta with F's map."""
    attn = _attention(3)
    N = 6
    hs_f, hs_c, text = torch.randn(N, 24), torch.randn(N, 24), torch.randn(77, 16)
    proc = InfusionAttnProcessor("L")
    delta = torch.randn(1, 24)
    proc.deltas, proc.own_maps = {"c": delta}, {"c"}
    plan = InfusionPlan.build("fused", 1, [0], [[ConceptSpan("c", (4,))]])
    out = proc(attn, torch.stack([hs_f, hs_c]), torch.stack([text, text]), infusion=plan)
    with torch.no_grad():
        ref_own, ref_paper = own_maps_reference(attn, hs_f, hs_c, text, {4: delta[0]}), eq7_reference(attn, hs_f, text, {4: delta[0]})
        stock = AttnProcessor2_0()(attn, hs_f[None], text[None])
    torch.testing.assert_close(out[1], ref_own, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out[1], ref_paper, atol=1e-3)
    assert torch.equal(out[:1], stock)
    proc.own_maps = set()  # the same Delta, the paper's maps
    torch.testing.assert_close(proc(attn, torch.stack([hs_f, hs_c]), torch.stack([text, text]), infusion=plan)[1], ref_paper,
                               rtol=1e-4, atol=1e-4)


def test_own_maps_with_zero_delta_is_f_bit_for_bit_and_record_inject_matches_fused():
    attn = _attention(4)
    hs, c_hs, text = torch.randn(2, 5, 24), torch.randn(2, 5, 24), torch.randn(2, 77, 16)
    proc = InfusionAttnProcessor("L")
    proc.deltas, proc.own_maps = {"c": torch.zeros(1, 24)}, {"c"}
    spans = [[ConceptSpan("c", (2,))], []]  # the second C row has no concept (inactive, like C_uncond)
    out = proc(attn, torch.cat([hs, c_hs]), torch.cat([text, text]), infusion=InfusionPlan.build("fused", 2, [0, 1], spans))
    assert torch.equal(out[2:], out[:2])  # C == F whatever C's own hidden state
    with torch.no_grad():
        assert torch.equal(out[:2], AttnProcessor2_0()(attn, hs, text))
    proc.deltas = {"c": torch.randn(1, 24)}
    fused = proc(attn, torch.cat([hs, c_hs]), torch.cat([text, text]), infusion=InfusionPlan.build("fused", 2, [0, 1], spans))
    plan = InfusionPlan.build("record", 2, [0, 1], spans)
    proc(attn, hs, text, infusion=plan)
    plan.mode = "inject"
    torch.testing.assert_close(proc(attn, c_hs, text, infusion=plan), fused[2:], rtol=0, atol=1e-6)
    assert torch.equal(fused[3], out[3]) and not torch.allclose(fused[2], out[2])  # only the active row moves


def test_own_maps_and_paper_concepts_compose_order_free_and_add():
    """An own-maps concept (a) and one of the paper's kind (b) in one prompt: a placed by C's map, b by F's; their
    updates add; the order of the spans does not matter."""
    attn = _attention(5)
    hs, c_hs, text = torch.randn(7, 24), torch.randn(7, 24), torch.randn(77, 16)
    da, db = torch.randn(1, 24), torch.randn(2, 24)
    proc = InfusionAttnProcessor("L")
    proc.own_maps = {"a"}
    spans = [[ConceptSpan("b", (2, 3)), ConceptSpan("a", (6,))]]
    x, t = torch.stack([hs, c_hs]), torch.stack([text, text])

    def c_row(a, b, sp=spans):
        proc.deltas = {"a": a, "b": b}
        return proc(attn, x, t, infusion=InfusionPlan.build("fused", 1, [0], sp))[1]

    both = c_row(da, db)
    assert torch.equal(both, c_row(da, db, [spans[0][::-1]]))
    with torch.no_grad():
        f_out = eq7_reference(attn, hs, text, {})
        ref = own_maps_reference(attn, hs, c_hs, text, {6: da[0]}) + eq7_reference(attn, hs, text, {2: db[0], 3: db[1]}) - f_out
    torch.testing.assert_close(both, ref, rtol=1e-4, atol=1e-4)


def test_own_maps_trains_saves_loads_and_generates(tiny_pipe, concept_images, tmp_path):
    """maps=own end to end: F's record pass then C's, frozen weights unchanged, the file says maps=own (format 2),
    a zero-Delta own-maps concept generates the base images bit for bit, a trained one does not, and a prompt without
    the concept is the stock pipeline's."""
    from safetensors import safe_open

    from infusion.methods.infusion.concept import Concept
    from infusion.methods.infusion.pipeline import InfusionPipeline
    from infusion.training import TrainConfig, train
    from infusion.methods import get_method

    out = tmp_path / "own.safetensors"
    cfg = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square", out=str(out), steps=3,
                      lr=1e-2, method_args={"maps": "own"})
    m = get_method("infusion")(tiny_pipe, cfg)
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda mod, args, kw, o: calls.append(kw["cross_attention_kwargs"]["infusion"].mode),
                                                with_kwargs=True)
    m(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), m.encode_captions(["a photo of a <sq>"] * 2))
    hook.remove()
    assert calls == ["record", "inject"]
    base_unet = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    c = train(cfg, pipe=tiny_pipe, progress=False)
    assert all(torch.equal(v, base_unet[k]) for k, v in tiny_pipe.unet.state_dict().items())
    assert c.maps == "own" and all(d.abs().sum() > 0 for d in c.deltas.values())
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["maps"] == "own" and meta["format_version"] == "2"
    loaded = Concept.load(out)
    assert loaded.maps == "own"
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    pipe.set_progress_bar_config(disable=True)
    g = lambda: torch.Generator().manual_seed(0)
    zero = Concept("zq", "square", {k: torch.zeros_like(v) for k, v in loaded.deltas.items()}, maps="own")
    res = pipe("a photo of a <zq>", concepts=[zero], num_inference_steps=2, generator=g(), output_type="pt")
    assert torch.equal(res.images, res.base_images)
    res = pipe("a photo of a <sq>", concepts=[loaded], num_inference_steps=2, generator=g(), output_type="pt")
    assert (res.images - res.base_images).abs().max() > 0
    plain = pipe("a photo of a square", concepts=[loaded], num_inference_steps=2, generator=g(), output_type="pt",
                 guidance_scale=8.0)
    stock = tiny_pipe("a photo of a square", num_inference_steps=2, generator=g(), output_type="pt",
                      guidance_scale=8.0).images
    assert torch.equal(plain.images, stock)
    with pytest.raises(ValueError, match="maps"):
        Concept("x", "square", loaded.deltas, maps="theirs")


def test_query_variant_trains_saves_loads_and_generates(tiny_pipe, concept_images, tmp_path):
    from infusion.methods.infusion.concept import Concept
    from infusion.methods.infusion.pipeline import InfusionPipeline
    from infusion.training import TrainConfig, train

    base_unet = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    out = tmp_path / "q.safetensors"
    cfg = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square", out=str(out), steps=3,
                      lr=1e-2, method_args={"residual": "query", "query_rank": 2})
    c = train(cfg, pipe=tiny_pipe, progress=False)
    assert c.residual == "query" and all(t.abs().sum() > 0 for _, t in c.query.values())  # B moved off zero
    assert all(torch.equal(v, base_unet[k]) for k, v in tiny_pipe.unet.state_dict().items())  # frozen
    loaded = Concept.load(out)
    assert loaded.residual == "query" and set(loaded.query) == set(loaded.deltas)
    a, b = next(iter(loaded.query.values()))
    assert a.shape[-1] == 2 and b.shape[1] == 2
    assert loaded.num_parameters() == sum(d.numel() + 4 * d.shape[1] for d in loaded.deltas.values())
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    pipe.set_progress_bar_config(disable=True)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    res = pipe("a photo of a <sq>", concepts=[loaded], num_inference_steps=2, generator=g(), output_type="pt")
    assert (res.images - res.base_images).abs().max() > 0, (res.images - res.base_images).abs().max()
    # a placeholder-free prompt on the pipeline that has just generated with the concept: the stock pipeline
    plain = pipe("a photo of a square", concepts=[loaded], num_inference_steps=2, generator=g(), output_type="pt",
                 guidance_scale=8.0)
    stock = tiny_pipe("a photo of a square", num_inference_steps=2, generator=g(), output_type="pt",
                      guidance_scale=8.0).images
    assert torch.equal(plain.images, stock)


def test_t_max_injects_only_below_it(tiny_pipe, tmp_path):
    """The rule "inject at t < t_max * T", where it decides: 4 DDIM steps (t = 751, 501, 251, 1) and t_max * T = 501,
    a sampled step. C's UNet rows equal F's, bit for bit, at 751 and at 501 itself (not below it), and differ from
    the first step below; every step below t_max * T runs a plan that injects, no step at or above it does. The two
    ends too: t_max at the lowest step (no step injects: C == F) and 1 (every step injects)."""
    from infusion.methods.infusion.concept import Concept
    from infusion.methods.infusion.pipeline import InfusionPipeline
    from conftest import random_concept

    c = random_concept(tiny_pipe, "sq", "square", scale=5.0)
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    pipe.set_progress_bar_config(disable=True)
    T = pipe.scheduler.config.num_train_timesteps
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    calls = []  # per UNet call: (t, C rows == F rows, the step's plan injects)

    def record(mod, args, kw, out):
        eps, plan = out[0], kw["cross_attention_kwargs"]["infusion"]
        f, c_rows = eps.chunk(2)
        calls.append((int(args[1]), torch.equal(f, c_rows), len(plan.active) > 0))

    hook = pipe.unet.register_forward_hook(record, with_kwargs=True)
    try:
        pipe.scheduler.set_timesteps(4)
        steps = [int(t) for t in pipe.scheduler.timesteps]
        assert len(steps) == 4 and steps[-1] < steps[1] < steps[0]
        limit = steps[1]  # t_max * T falls on a sampled step
        late = Concept(c.name, c.class_phrase, c.deltas, t_max=limit / T)
        out = pipe("a photo of a <sq>", concepts=[late], num_inference_steps=4, generator=g(), output_type="pt")
        assert [t for t, *_ in calls] == steps
        assert [inj for *_, inj in calls] == [t < limit for t in steps] == [False, False, True, True]
        assert [same for _, same, _ in calls][:3] == [True, True, False]  # C follows F until the first injection
        assert not torch.equal(out.images, out.base_images)
        del calls[:]
        lowest = Concept(c.name, c.class_phrase, c.deltas, t_max=steps[-1] / T)
        off = pipe("a photo of a <sq>", concepts=[lowest], num_inference_steps=4, generator=g(), output_type="pt")
        assert not any(inj for *_, inj in calls) and torch.equal(off.images, off.base_images)
        del calls[:]
        pipe("a photo of a <sq>", concepts=[c], num_inference_steps=4, generator=g(), output_type="pt")
        assert all(inj for *_, inj in calls) and not calls[0][1]
    finally:
        hook.remove()
    path = late.save(tmp_path / "late.safetensors")
    assert Concept.load(path).t_max == late.t_max


def test_train_t_max_trains_below_it_and_the_concept_injects_at_every_step(tiny_pipe, concept_images, tmp_path):
    """``train_t_max=0.5``: every training row's timestep is below T/2, and the file's t_max stays 1 (generation
    injects at every step); ``t_max`` alone sets both."""
    from infusion.methods.infusion.concept import Concept
    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training import TrainConfig, train

    seen = []
    pipe = tiny_sd_pipeline()
    hook = pipe.unet.register_forward_hook(lambda mod, args, kw, out: seen.append(args[1].clone()), with_kwargs=True)
    cfg = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square", steps=6, batch_size=2,
                      out=str(tmp_path / "sq.safetensors"), method_args={"maps": "own", "train_t_max": 0.5})
    c = train(cfg, pipe=pipe, progress=False)
    hook.remove()
    T = pipe.scheduler.config.num_train_timesteps
    t = torch.cat([x.reshape(-1) for x in seen])
    assert len(t) >= 12 and int(t.max()) < T // 2
    assert c.t_max == 1.0 and Concept.load(tmp_path / "sq.safetensors").t_max == 1.0
    from infusion.methods import get_method

    both = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square",
                       out=str(tmp_path / "x.safetensors"), method_args={"t_max": 0.25})
    assert get_method("infusion")(tiny_sd_pipeline(), both).max_train_timestep(T) == T // 4


def test_paired_training_runs_f_on_base_redraws(tiny_pipe, concept_images, tmp_path, monkeypatch):
    """``paired=true``, in a real training run: at every step F's record pass gets the base model's redraw of each
    row's image noised with the row's own noise and t (``paired_views=1``: the one redraw), while C's pass gets the
    concept's noisy latent, which differs; the redraws are not the images; only the Deltas change; and the result
    differs from the unpaired run's. The method's own pieces, alone: views differ, C gets its latent."""
    from diffusers import DDPMScheduler

    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.methods import get_method
    from infusion.training import TrainConfig, train

    cls = get_method("infusion")
    cfg = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square", out=str(tmp_path / "p.safetensors"),
                      steps=3, lr=1e-2, batch_size=2, method_args={"paired": True, "paired_views": 1})
    steps, method = [], {}
    real_prepare = cls.prepare_batch

    def prepare(self, idx, noise, t, noise_scheduler, generator):  # what the trainer hands over at each step
        method["m"] = self
        steps.append({"idx": idx.clone(), "noise": noise.clone(), "t": t.clone(), "inputs": []})
        return real_prepare(self, idx, noise, t, noise_scheduler, generator)

    monkeypatch.setattr(cls, "prepare_batch", prepare)
    pipe = tiny_sd_pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    hook = pipe.unet.register_forward_hook(
        lambda mod, args, kw, out: steps[-1]["inputs"].append(args[0].clone()) if steps else None, with_kwargs=True)
    paired = train(cfg, pipe=pipe, progress=False)
    hook.remove()
    m = method["m"]
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    assert m.redraws.shape[0] == 1 and len(steps) == 3
    for s in steps:
        f_in, c_in = s["inputs"]  # one F pass, then one C pass per step
        torch.testing.assert_close(f_in, sched.add_noise(m.redraws[0, s["idx"]], s["noise"], s["t"]), rtol=0, atol=0)
        assert not torch.equal(f_in, c_in)
    assert all(d.abs().sum() > 0 for d in paired.deltas.values())
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # the base model is frozen
    plain = train(TrainConfig(**{**cfg.to_dict(), "method_args": {}, "out": str(tmp_path / "u.safetensors")}),
                  pipe=tiny_sd_pipeline(), progress=False)
    assert any(not torch.equal(paired.deltas[k], plain.deltas[k]) for k in plain.deltas)
    # the pieces alone, with two views: the views differ from the latents and from each other; C gets its latent
    two = TrainConfig(**{**cfg.to_dict(), "method_args": {"paired": True, "paired_views": 2}})
    monkeypatch.undo()
    m = cls(tiny_pipe, two)
    mean = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    m.attach_latents(mean, torch.zeros_like(mean))
    assert m.redraws.shape == (2, 3, 4, 8, 8) and not torch.allclose(m.redraws[0], mean)
    assert not torch.equal(m.redraws[0], m.redraws[1])
    idx, noise, t = torch.tensor([2, 0]), torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    m.prepare_batch(idx, noise, t, sched, torch.Generator().manual_seed(1))
    inputs = []
    hook = tiny_pipe.unet.register_forward_hook(lambda mod, args, kw, out: inputs.append(args[0].clone()), with_kwargs=True)
    z_c = sched.add_noise(mean[idx], noise, t)
    m(z_c, t, m.encode_captions(["a photo of a <sq>"] * 2))
    hook.remove()
    view = torch.randint(2, (2,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(inputs[0], sched.add_noise(m.redraws[view, idx], noise, t), rtol=0, atol=0)
    assert torch.equal(inputs[1], z_c)


@pytest.mark.parametrize("args,match", [({"residual": "key"}, "residual"), ({"query_rank": 0, "residual": "query"}, "query_rank"),
                                        ({"t_max": 0}, "t_max"), ({"paired": True, "paired_strength": 0}, "paired_strength"),
                                        ({"paired": True, "paired_views": 0}, "paired_views"), ({"maps": "mine"}, "maps"),
                                        ({"train_t_max": 1.5}, "train_t_max"),
                                        ({"t_max": 0.5, "train_t_max": 0.8}, r"train_t_max must be in \(0, t_max = 0.5\]")])
def test_bad_variant_arguments_are_clear_errors(tiny_pipe, concept_images, tmp_path, args, match):
    from infusion.training import TrainConfig
    from infusion.methods import get_method

    cfg = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square",
                      out=str(tmp_path / "x.safetensors"), method_args=args)
    with pytest.raises(ValueError, match=match):
        get_method("infusion")(tiny_pipe, cfg)
