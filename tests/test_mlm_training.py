"""Training with the diverse-context MLM regulariser (DESIGN section 7): ``--mlm-lambda``."""

import pytest
import torch

from infusion.cli import main
from infusion.core.model_configs import tiny_sd_pipeline
from infusion.core.tokens import STAND_IN
from infusion.methods import get_method
from infusion.mlm import Contextualizer, ContextualizerConfig, PretrainConfig, pretrain_contextualizer, save_contextualizer
from infusion.mlm.prompts import world_prompt_set
from infusion.training import TrainConfig, train
from infusion.training.regularizer import build_regularizer, mlm_term


@pytest.fixture(scope="module")
def ctx_path(tmp_path_factory):
    """A contextualizer pretrained for a few steps on the tiny text encoder (width 32)."""
    pipe = tiny_sd_pipeline(seed=0)
    captions = [p.replace("<concept>", "cat") for p in world_prompt_set().generate(64, seed=0)]
    out = tmp_path_factory.mktemp("ctx") / "ctx.safetensors"
    cfg = ContextualizerConfig(32, vocab_size=len(pipe.tokenizer), n_layers=1, n_heads=2, dropout=0.0)
    pretrain_contextualizer(pipe.text_encoder, pipe.tokenizer, captions, out,
                            PretrainConfig(steps=3, batch_size=8, lr=3e-3, warmup=1, checkpoint_every=0, seed=1), cfg,
                            progress=False)
    return out


NO_PRIOR = {"prior_loss_weight": 0}
# method, method_args, trainable names L_MLM must reach (prefixes), trainable names it must not reach
CASES = [
    ("ti", {}, ["token"], []),
    ("pplus", {}, ["tokens"], []),
    ("custom-diffusion", NO_PRIOR, ["token"], ["layers."]),
    ("dreambooth", {**NO_PRIOR, "train_text_encoder": True}, ["text_encoder."], ["unet."]),
]


def _cfg(images, out, ctx=None, **kw):
    base = dict(model="tiny", images=str(images), name="mycat", class_phrase="cat", out=str(out), steps=4,
                batch_size=2, method="ti", contextualizer=None if ctx is None else str(ctx))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method,args,reached,unreached", CASES, ids=[c[0] for c in CASES])
def test_mlm_gradient_reaches_only_the_text_side(method, args, reached, unreached, ctx_path, concept_images, tmp_path):
    pipe = tiny_sd_pipeline(seed=0)
    cfg = _cfg(concept_images, tmp_path / "o", ctx_path, method=method, method_args=args, mlm_lambda=1.0)
    m = get_method(method)(pipe, cfg)
    side = m.mlm_text_side()
    reg = build_regularizer(cfg, side, pipe.tokenizer)
    mlm_term(reg, side, torch.Generator().manual_seed(0)).backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    hit = [n for n, g in grads.items() if any(n.startswith(r) for r in reached)]
    assert hit and all(grads[n] is not None for n in hit)
    assert sum(float(grads[n].abs().sum()) for n in hit) > 0
    for n, g in grads.items():
        if any(n.startswith(u) for u in unreached) or not any(n.startswith(r) for r in reached):
            assert g is None or not g.any(), n  # the UNet side learns from L_diff only
    # the UNet parameters the method does train (Custom Diffusion's K/V, DreamBooth's UNet) learn from L_diff only
    assert all(p.grad is None or not p.grad.any() for p in pipe.unet.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in reg.contextualizer.parameters())  # build_regularizer froze it
    if method == "pplus":  # one L_MLM per layer's token: every row gets its own, non-zero gradient
        assert all(m.tokens.grad[j].abs().sum() > 0 for j in range(len(m.tokens)))  # (equal rows: equal initial tokens)


def test_masking_never_touches_concept_or_class_tokens(ctx_path, concept_images, tmp_path, monkeypatch):
    import infusion.mlm.loss as loss_mod

    seen = []
    real = loss_mod.sample_mask

    def spy(maskable, rate=0.15, generator=None):
        mask = real(maskable, rate, generator)
        seen.append(mask)
        return mask

    real_mlm = loss_mod.mlm_loss

    def spy_loss(text_encoder, contextualizer, mask_embedding, batch, *a, **k):
        seen.append(batch)
        return real_mlm(text_encoder, contextualizer, mask_embedding, batch, *a, **k)

    monkeypatch.setattr(loss_mod, "sample_mask", spy)
    monkeypatch.setattr(loss_mod, "mlm_loss", spy_loss)
    pipe = tiny_sd_pipeline(seed=0)
    train(_cfg(concept_images, tmp_path / "cd", ctx_path, method="custom-diffusion", method_args=NO_PRIOR, steps=3,
               mlm_lambda=1e-3), pipe=pipe, progress=False)
    assert len(seen) == 6  # (ids, mask) per step
    sks = pipe.tokenizer(STAND_IN, add_special_tokens=False)["input_ids"][0]
    (cat,) = pipe.tokenizer("cat", add_special_tokens=False)["input_ids"]
    for batch, mask in zip(seen[0::2], seen[1::2]):
        assert mask.any()
        for row, m, real in zip(batch.input_ids, mask, batch.attention_mask):
            (pos,) = (row == sks).nonzero()[:, 0].tolist()  # the concept, written "sks cat", once per prompt
            assert row[pos + 1] == cat
            assert not m[pos] and not m[pos + 1]
            assert not m[0] and not m[real.sum() - 1] and not m[real == 0].any()  # BOS, EOS, padding


def _ti_token(images, out, ctx, **kw):
    return train(_cfg(images, out, ctx, **kw), pipe=tiny_sd_pipeline(seed=0), progress=False)["<mycat>"]


def test_lambda_zero_is_the_plain_run_and_lambda_changes_it(ctx_path, concept_images, tmp_path):
    plain = _ti_token(concept_images, tmp_path / "a.safetensors", None)
    zero = _ti_token(concept_images, tmp_path / "b.safetensors", ctx_path, mlm_lambda=0.0, mlm_prompts="world")
    assert torch.equal(plain, zero)
    reg = _ti_token(concept_images, tmp_path / "c.safetensors", ctx_path, mlm_lambda=1.0)
    assert not torch.allclose(plain, reg)


def test_resume_of_a_regularised_run_is_exact(ctx_path, concept_images, tmp_path, optimizer_steps):
    kw = dict(method="custom-diffusion", method_args=NO_PRIOR, mlm_lambda=0.5, mlm_prompts="world")
    full = train(_cfg(concept_images, tmp_path / "full", ctx_path, **kw), pipe=tiny_sd_pipeline(seed=0), progress=False)
    part = tmp_path / "part"
    train(_cfg(concept_images, part, ctx_path, steps=2, **kw), pipe=tiny_sd_pipeline(seed=0), progress=False)
    with pytest.raises(ValueError, match="mlm_lambda=0.5"):
        train(_cfg(concept_images, part, ctx_path, resume="auto", **{**kw, "mlm_lambda": 0.25}),
              pipe=tiny_sd_pipeline(seed=0), progress=False)
    del optimizer_steps[:]
    resumed = train(_cfg(concept_images, part, ctx_path, resume="auto", **kw), pipe=tiny_sd_pipeline(seed=0),
                    progress=False)
    steps = _cfg(concept_images, part, ctx_path, **kw).steps
    assert len(optimizer_steps) == steps - 2  # the remaining steps only
    from safetensors.torch import load_file

    for name in ("learned_embeds.safetensors", "pytorch_custom_diffusion_weights.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_prompt_file(ctx_path, concept_images, tmp_path, monkeypatch):
    """``--mlm-prompts FILE``: the L_MLM batches are drawn from the file's prompts, every one of them and nothing
    else, and the token learned differs from a run on the built-in world set; a prompt that does not name the
    concept is refused, naming it."""
    from infusion.mlm import MLMRegularizer

    lines = ["a <mycat> on a red sofa", "a <mycat> next to a green car", "two birds above a <mycat>"]
    good = tmp_path / "p.txt"
    good.write_text(f"{lines[0]}\n\n{lines[1]}\n  {lines[2]}  \n", encoding="utf-8")
    drawn, regs = [], []
    real = MLMRegularizer._tokenized

    def spy(self, i):  # every prompt of every MLM batch passes through here
        regs.append(self)
        drawn.append(self.prompts[i])
        return real(self, i)

    monkeypatch.setattr(MLMRegularizer, "_tokenized", spy)
    token = _ti_token(concept_images, tmp_path / "t.safetensors", ctx_path, steps=2, mlm_lambda=1.0, mlm_prompts=str(good))
    assert regs[0].prompts == lines
    assert set(drawn) == set(lines) and len(drawn) == 2 * 25  # 2 steps of TI's batch of 25
    world = _ti_token(concept_images, tmp_path / "w.safetensors", ctx_path, steps=2, mlm_lambda=1.0, mlm_prompts="world")
    assert torch.isfinite(token).all() and not torch.equal(token, world)
    bad = tmp_path / "bad.txt"
    bad.write_text("a <mycat> on a sofa\na cat on a sofa\n", encoding="utf-8")
    with pytest.raises(ValueError, match="prompt 2 .* <mycat>"):
        _ti_token(concept_images, tmp_path / "u.safetensors", ctx_path, steps=1, mlm_lambda=1.0, mlm_prompts=str(bad))


@pytest.mark.parametrize("kw,match", [
    (dict(mlm_lambda=1e-4), "needs --contextualizer"),
    (dict(mlm_lambda=-1.0), "finite number >= 0"),
    (dict(mlm_lambda=float("nan")), "finite number >= 0"),
    (dict(mlm_lambda=1e-4, method="lora", ctx=True), "custom-diffusion, dreambooth, pplus, ti"),
    (dict(mlm_lambda=1e-4, method="infusion", ctx=True), "'infusion' has none"),
    (dict(mlm_lambda=1e-4, method="perfusion", ctx=True), "'perfusion' has none"),
    (dict(mlm_lambda=1e-4, ctx=True, mlm_prompts="nowhere.txt"), "everyday or world"),
    (dict(mlm_lambda=1e-4, contextualizer="missing.safetensors"), "no such file"),
])
def test_bad_flags_are_refused_up_front(kw, match, ctx_path, concept_images, tmp_path):
    ctx = ctx_path if kw.pop("ctx", False) else None
    with pytest.raises(ValueError, match=match):
        _cfg(concept_images, tmp_path / "o", ctx, **kw)


def test_bad_text_side_is_refused(ctx_path, concept_images, tmp_path):
    narrow = tmp_path / "narrow.safetensors"  # a contextualizer for a width-16 text encoder
    save_contextualizer(narrow, Contextualizer(ContextualizerConfig(16, vocab_size=49408, n_layers=1, n_heads=2)),
                        torch.zeros(16))
    with pytest.raises(ValueError, match="width 16, this one has width 32"):
        _ti_token(concept_images, tmp_path / "w.safetensors", narrow, mlm_lambda=1e-4)
    with pytest.raises(ValueError, match="train_text_encoder=true"):
        train(_cfg(concept_images, tmp_path / "db", ctx_path, method="dreambooth", method_args=NO_PRIOR, mlm_lambda=1e-4),
              pipe=tiny_sd_pipeline(seed=0), progress=False)


def test_cli_flags(ctx_path, concept_images, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    rc = main(["train", "--model", "tiny", "--images", str(concept_images), "--name", "mycat", "--class-phrase", "cat",
               "--out", str(out), "--method", "ti", "--steps", "1", "--batch-size", "1", "--mlm-lambda", "1e-5",
               "--mlm-prompts", "world", "--contextualizer", str(ctx_path)])
    assert rc == 0 and out.is_file()
    import json

    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        training = json.loads(f.metadata()["training"])
    assert training["mlm_lambda"] == 1e-5 and training["contextualizer"] == str(ctx_path)


def test_pplus_mlm_is_the_mean_of_one_loss_per_layer_token(ctx_path, concept_images, tmp_path):
    """As the MLM paper's authors run P+ (pplus_train_clean.py L656-676): each layer's token through the text
    encoder on the same prompts and mask; the regulariser is their mean, its gradient the per-token losses'
    gradients summed over n (token j's loss reaches token j only)."""
    pipe = tiny_sd_pipeline(seed=0)
    cfg = _cfg(concept_images, tmp_path / "p.safetensors", ctx_path, method="pplus", mlm_lambda=1.0, mlm_prompts="world")
    m = get_method("pplus")(pipe, cfg)
    with torch.no_grad():  # distinct tokens, so each layer's loss differs
        m.tokens.add_(0.05 * torch.randn(m.tokens.shape, generator=torch.Generator().manual_seed(0)))
    side = m.mlm_text_side()
    assert len(side.embed_fns) == len(m.layers)
    reg = build_regularizer(cfg, side, pipe.tokenizer, batch_size=3)
    g = torch.Generator().manual_seed(5)
    total = mlm_term(reg, side, g)
    total.backward()
    summed = m.tokens.grad.clone()
    parts = []
    for fn in side.embed_fns:
        m.tokens.grad = None
        one = reg(side.text_encoder, fn, generator=torch.Generator().manual_seed(5))
        one.backward()
        parts.append((float(one.detach()), m.tokens.grad.clone()))
    n = len(parts)
    assert float(total.detach()) == pytest.approx(sum(v for v, _ in parts) / n, rel=1e-5)
    torch.testing.assert_close(summed, sum(gr for _, gr in parts) / n, rtol=1e-5, atol=1e-8)
    for j, (_, gr) in enumerate(parts):  # loss j reaches token j only
        assert gr[j].abs().sum() > 0 and all(not gr[k].any() for k in range(len(parts)) if k != j)


@pytest.mark.parametrize("with_class", [False, True])
def test_ti_with_and_without_the_class_word(ctx_path, concept_images, tmp_path, with_class):
    """``with_class``: '<tok> <class>' in the diffusion captions, the MLM prompts (both protected) and at generation."""
    from infusion.customized import load_customized
    from infusion.methods.textual_inversion.training import TextualInversion

    pipe = tiny_sd_pipeline(seed=0)
    args = {"with_class": with_class}
    cfg = _cfg(concept_images, tmp_path / "t.safetensors", ctx_path, method="ti", method_args=args, mlm_lambda=1.0,
               mlm_prompts="world", steps=1)
    m = TextualInversion(pipe, cfg)
    batch = m.encode_captions(["a photo of a <mycat>"])
    text = pipe.tokenizer.decode(batch.ids[0][batch.ids[0] != pipe.tokenizer.pad_token_id])
    assert (f"{STAND_IN} cat" in text) == with_class and STAND_IN in text
    side = m.mlm_text_side()
    assert side.concept_text == (f"{STAND_IN} cat" if with_class else STAND_IN)
    assert build_regularizer(cfg, side, pipe.tokenizer).batch_size == 4  # cfg.mlm_batch unset: the caller's default
    train(cfg, pipe=tiny_sd_pipeline(seed=0), progress=False)
    gen = load_customized("tiny", [tmp_path / "t.safetensors"])
    assert gen.customizations[0].phrase() == ("<mycat> cat" if with_class else "<mycat>")


def test_mlm_batch_defaults_follow_the_authors(ctx_path, concept_images, tmp_path, monkeypatch):
    import infusion.training.trainer as trainer_mod

    seen = {}
    real = trainer_mod.__dict__.get("build_regularizer")
    import infusion.training.regularizer as reg_mod

    orig = reg_mod.build_regularizer

    def spy(cfg, side, tokenizer, fingerprint=None, batch_size=None):
        r = orig(cfg, side, tokenizer, fingerprint, batch_size=batch_size)
        seen[cfg.method, cfg.mlm_batch] = r.batch_size
        return r

    monkeypatch.setattr(reg_mod, "build_regularizer", spy)
    for method, batch in (("ti", None), ("pplus", None), ("ti", 3)):
        train(_cfg(concept_images, tmp_path / f"{method}{batch}.safetensors", ctx_path, method=method, mlm_lambda=1e-3,
                   mlm_prompts="world", steps=1, mlm_batch=batch), pipe=tiny_sd_pipeline(seed=0), progress=False)
    assert seen == {("ti", None): 25, ("pplus", None): 12, ("ti", 3): 3}
    assert real is None  # the trainer imports it at call time, so the spy is what it used
    with pytest.raises(ValueError, match="--mlm-batch"):
        _cfg(concept_images, tmp_path / "x.safetensors", ctx_path, mlm_batch=0)


@pytest.mark.parametrize("method,args,reached,unreached", CASES, ids=[c[0] for c in CASES])
def test_bf16_regularised_run(method, args, reached, unreached, ctx_path, concept_images, tmp_path):
    """``--mixed-precision bf16`` with L_MLM: the frozen text encoder and contextualizer run in bfloat16 (the learned
    vectors or fine-tuned encoder in float32), the loss stays finite, and both come back in float32 after."""
    from infusion.training import Trainer

    pipe = tiny_sd_pipeline(seed=0)
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    seen = {}

    def during(report):
        seen["loss"], seen["mlm"] = report.loss, run.reg.last_loss
        seen["ctx"] = {p.dtype for p in run.reg.contextualizer.parameters()}
        seen["encoder"] = {p.dtype for p in pipe.text_encoder.parameters()}

    cfg = _cfg(concept_images, tmp_path / "o", ctx_path, method=method, method_args=args, mlm_lambda=1.0, steps=2,
               mixed_precision="bf16")
    run = Trainer(cfg, pipe=pipe, progress=False, callback=during)
    run.run()
    assert seen["ctx"] == {torch.bfloat16}
    assert seen["encoder"] == ({torch.float32} if method == "dreambooth" else {torch.bfloat16})  # trained: fp32 master
    assert torch.isfinite(torch.tensor([seen["loss"], seen["mlm"]])).all()
    assert {p.dtype for p in run.reg.contextualizer.parameters()} == {torch.float32}
    after = pipe.text_encoder.state_dict()
    assert all(after[k].dtype == v.dtype for k, v in before.items())
    if method != "dreambooth":
        assert all(torch.equal(after[k], v) for k, v in before.items())
