"""Every customization method from one table of cases (peft's TEST_CASES pattern): training on the
tiny model changes only the intended parameters, the file loads back through diffusers' own
loaders (or ours) to the same model, generation runs, storage is reported."""

import logging
import re

import numpy as np
import pytest
import torch
from conftest import write_square_images

from infusion.core.model_configs import tiny_sd_pipeline
from infusion.customized import load_customized
from infusion.methods import get_method
from infusion.training import TrainConfig, train

SMALL_PRIOR = {"num_class_images": 2, "prior_steps": 2}

# method, --out name, regexes of state-dict keys allowed (and expected) to change, new keys allowed, method args
CASES = [
    ("infusion", "c.safetensors", [], None, {}),
    ("ti", "c.safetensors", [], None, {}),
    ("pplus", "c.safetensors", [], None, {}),
    ("perfusion", "c.safetensors", [], None, {}),
    ("custom-diffusion", "c", [r"^unet\..*\.attn2\.to_[kv]\.weight$"], None, SMALL_PRIOR),
    ("lora", "c.safetensors", [], r"^unet\..*\.lora_[AB]\.default\.weight$", {}),
    ("dreambooth", "c", [r"^unet\."], None, SMALL_PRIOR),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared CPU: one thread is ~10x faster than two fighting a background job."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(images, out, method, args, **kw):
    base = dict(model="tiny", images=str(images), name="mycat", class_phrase="teddy bear", out=str(out),
                method=method, steps=2, batch_size=2, method_args=dict(args))
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(pipe):
    """Full state dicts of unet, text encoder, vae; peft's ``.base_layer`` renaming undone."""
    return {f"{m}.{k.replace('.base_layer', '')}": v.detach().clone()
            for m in ("unet", "vae", "text_encoder") for k, v in getattr(pipe, m).state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train every case once: method -> (trained method module, pipe, out path, before, after)."""
    root = tmp_path_factory.mktemp("methods")
    images = write_square_images(root / "images", n=3, size=32, stripes=False)
    torch.set_num_threads(1)
    out = {}
    import infusion.training.trainer as trainer

    for method, name, _, _, args in CASES:
        pipe = tiny_sd_pipeline()
        before = _snapshot(pipe)
        captured = {}
        orig = trainer.get_method

        def spy(n, _orig=orig, _cap=captured):  # keep a handle on the trained module
            cls = _orig(n)

            class Spy(cls):
                def __init__(self, *a, **k):
                    super().__init__(*a, **k)
                    _cap["m"] = self
                    _cap["init"] = {n: v.detach().clone() for n, v in self.trainable_state().items()}

            Spy.__name__ = cls.__name__
            return Spy

        trainer.get_method = spy
        try:
            path = root / method / name
            train(_cfg(images, path, method, args), pipe=pipe, progress=False)
        finally:
            trainer.get_method = orig
        out[method] = (captured["m"], pipe, path, before, _snapshot(pipe), images, captured["init"])
    return out


@pytest.mark.parametrize("method, name, allowed, new, args", CASES, ids=IDS)
def test_only_intended_parameters_change(trained, method, name, allowed, new, args):
    m, pipe, path, before, after = trained[method][:5]
    added = sorted(set(after) - set(before))
    assert set(before) <= set(after)
    if new is None:
        assert added == []
    else:
        assert added and all(re.match(new, k) for k in added)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    bad = [k for k in changed if not any(re.match(a, k) for a in allowed)]
    assert bad == [], f"{method} changed parameters it must not touch: {bad[:5]}"
    for pattern in allowed:  # and every intended group did change
        hits = [k for k in before if re.match(pattern, k)]
        assert hits and any(k in changed for k in hits), pattern
    if method == "custom-diffusion":  # every attn2 K and V, nothing else
        assert sorted(changed) == sorted(k for k in before if re.match(allowed[0], k))
    # every trainable tensor of the method moved away from its initial value
    init = trained[method][6]
    still = [n for n, v in m.trainable_state().items() if torch.equal(v.detach(), init[n])]
    assert init and still == [], f"{method}: trainable tensors that did not change: {still[:5]}"
    assert path.exists()


def _ddim_with_method(m, sched_config, latents, prompts, steps=2, guidance=4.0):
    """Sample with the *in-memory* trained module's own forward (the training-time model)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(sched_config)
    sched.set_timesteps(steps)
    text = m.encode_captions([""] * len(prompts) + list(prompts))  # rows [uncond, cond], as the pipeline
    z = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([z, z]), t)
        eps_u, eps_c = m(x, t.expand(x.shape[0]), text).chunk(2)
        z = sched.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    return z


@pytest.mark.parametrize("method", IDS)
def test_file_gives_the_trained_model(trained, method):
    """load_customized(file) on a fresh base == the in-memory trained module: eps and whole sampling."""
    m, _, path = trained[method][:3]
    m.eval()
    model = load_customized("tiny", [path])
    assert model.method == method and model.names == ["mycat"]
    if method == "perfusion":  # the file's generation gate (0.70 / 0.15) replaces the training one (0.75 / 0.1)
        m.edit.beta, m.edit.tau = model.customizations[0].edit.beta, model.customizations[0].edit.tau
    g = torch.Generator().manual_seed(1)
    prompts = ["a photo of <mycat> on a beach", "a drawing of a dog"]
    z = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500, 100])
    with torch.no_grad():
        ours = m(z, t, m.encode_captions(prompts))
        theirs = model.eps(z, t, prompts)
        torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-4)
        lat = torch.randn(1, 4, 8, 8, generator=g)
        ref = _ddim_with_method(m, model.pipe.scheduler.config, lat, prompts[:1])
    gen = model(prompts[:1], latents=lat.clone(), num_inference_steps=2, guidance_scale=4.0, output_type="latent")
    torch.testing.assert_close(gen.images, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", IDS)
def test_generation_and_storage(trained, method):
    """Customised images differ from the base model's, the base images are the stock pipeline's for the class
    phrase (same seed), and ``storage_bytes`` is the size on disk of what was written."""
    from pathlib import Path

    path = Path(trained[method][2])
    model = load_customized("tiny", [path])
    gens = [torch.Generator().manual_seed(0)]
    out = model(["a photo of <mycat>"], generator=gens, num_inference_steps=2, output_type="np", return_base=True)
    assert out.images.shape == (1, 16, 16, 3) and out.base_images.shape == (1, 16, 16, 3)
    assert not np.array_equal(out.images, out.base_images)
    stock = tiny_sd_pipeline()("a photo of teddy bear", generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                               guidance_scale=8.0, output_type="np").images
    np.testing.assert_allclose(out.base_images, stock, rtol=0, atol=1e-5)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    assert model.storage_bytes == sum(p.stat().st_size for p in files)
    with pytest.raises(ValueError, match="unknown concept <nobody>"):
        model(["a photo of <nobody>"], num_inference_steps=1)


def test_textual_inversion_file_is_diffusers_format(trained):
    """pipe.load_textual_inversion(path) with no token argument: the key is the token; only a new row."""
    m, _, path = trained["ti"][:3]
    pipe = tiny_sd_pipeline()
    old = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    pipe.load_textual_inversion(str(path))
    tid = pipe.tokenizer.convert_tokens_to_ids("<mycat>")
    new = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert tid == old.shape[0] and new.shape[0] == old.shape[0] + 1
    assert torch.equal(new[: old.shape[0]], old)
    assert torch.equal(new[tid], m.token.detach())
    init = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer("teddy bear", add_special_tokens=False)
                                                           ["input_ids"]].mean(0)
    assert not torch.allclose(new[tid], init)  # it learned


def test_token_table_growth_line_is_dropped_and_others_kept():
    """quiet_logs: transformers' mean-resizing line (printed by every ``load_textual_inversion``, whose new row is then
    overwritten) does not reach a handler; another line of the same logger does."""
    import infusion  # noqa: F401  (installs the filters)

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("transformers.modeling_utils")
    log.addHandler(handler)
    try:
        log.warning("The new embeddings will be initialized from a multivariate normal distribution that has old "
                    "embeddings' mean and covariance.")
        log.warning("some other warning")
    finally:
        log.removeHandler(handler)
    assert seen == ["some other warning"]


def test_lora_and_custom_diffusion_files_load_with_diffusers(trained):
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor
    from safetensors.torch import load_file

    lora_path, after = trained["lora"][2], trained["lora"][4]
    pipe = tiny_sd_pipeline()
    seen = []  # a UNet-only file: diffusers' "No LoRA keys associated to CLIPTextModel" line is dropped (quiet_logs)
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("diffusers.loaders.lora_base")
    log.addHandler(handler)
    try:
        pipe.load_lora_weights(str(lora_path))
    finally:
        log.removeHandler(handler)
    assert not [m for m in seen if "No LoRA keys" in m]
    sd = pipe.unet.state_dict()
    loaded = {k: v for k, v in sd.items() if ".lora_" in k}
    assert len(loaded) == len([k for k in after if ".lora_" in k]) > 0
    for k, v in loaded.items():  # adapter "default_0" here, "default" in the trained model
        assert torch.equal(v, after["unet." + k.replace("default_0", "default")]), k

    cd_path, after = trained["custom-diffusion"][2], trained["custom-diffusion"][4]
    pipe = tiny_sd_pipeline()
    pipe.unet.load_attn_procs(str(cd_path), weight_name="pytorch_custom_diffusion_weights.safetensors", _pipeline=pipe)
    procs = {k: p for k, p in pipe.unet.attn_processors.items() if isinstance(p, CustomDiffusionAttnProcessor)}
    assert procs and all(("attn2" in k) == p.train_kv for k, p in procs.items())
    for k, p in procs.items():
        if p.train_kv:
            layer = k[: -len(".processor")]
            assert torch.equal(p.to_k_custom_diffusion.weight, after[f"unet.{layer}.to_k.weight"])
    assert set(load_file(str(cd_path / "learned_embeds.safetensors"))) == {"<mycat>"}


def test_dreambooth_folder_is_a_diffusers_pipeline_and_prior_is_cached(trained):
    from diffusers import StableDiffusionPipeline

    path, after, images = trained["dreambooth"][2], trained["dreambooth"][4], trained["dreambooth"][5]
    loaded = StableDiffusionPipeline.from_pretrained(str(path))
    for k, v in loaded.unet.state_dict().items():
        assert torch.equal(v, after["unet." + k]), k
    prior = path.with_name(path.stem + ".prior")
    pngs = sorted(prior.glob("*.png"))
    assert len(pngs) == 2
    stamp = [p.stat().st_mtime_ns for p in pngs]
    m = get_method("dreambooth")(tiny_sd_pipeline(), _cfg(images, path, "dreambooth", SMALL_PRIOR))
    assert [p.stat().st_mtime_ns for p in pngs] == stamp  # reused, not regenerated
    assert m.prior_data().mean.shape[0] == 2 and m.prior_data().weight == 1.0


def test_dreambooth_folder_loads_from_safetensors_only(trained, tmp_path):
    """``use_safetensors=True``: the same folder with its UNet as pickled ``.bin`` weights instead is refused with a
    message, never unpickled; with safetensors it loads."""
    import shutil

    path = trained["dreambooth"][2]
    pickled = tmp_path / "pickled"
    shutil.copytree(path, pickled)
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    loaded = load_customized("tiny", [path]).pipe  # the folder as written: safetensors
    loaded.unet.save_pretrained(pickled / "unet", safe_serialization=False)
    assert [p.name for p in (pickled / "unet").iterdir() if p.suffix != ".json"] == ["diffusion_pytorch_model.bin"]
    with pytest.raises(ValueError, match="safetensors weights only"):
        load_customized("tiny", [pickled])


@pytest.mark.parametrize("method", ["ti", "perfusion"])
def test_resume_reproduces_an_uninterrupted_run(trained, tmp_path, method, optimizer_steps):
    from safetensors.torch import load_file

    images = trained["ti"][5]
    full = tmp_path / "full.safetensors"
    part = tmp_path / "part.safetensors"
    train(_cfg(images, full, method, {}, steps=3), pipe=tiny_sd_pipeline(), progress=False)
    train(_cfg(images, part, method, {}, steps=1), pipe=tiny_sd_pipeline(), progress=False)
    del optimizer_steps[:]
    train(_cfg(images, part, method, {}, steps=3, resume="auto"), pipe=tiny_sd_pipeline(), progress=False)
    assert len(optimizer_steps) == 2  # the remaining steps only (a run that started over would take 3)
    a, b = load_file(str(full)), load_file(str(part))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_perfusion_gate_locks_the_key_to_the_class():
    """Eq. 3 at x = i*: W' i* = sigmoid((1 - beta)/tau) o*, whatever W; far from i* the edit is off."""
    from infusion.methods.perfusion.training import RankOneEdit

    g = torch.Generator().manual_seed(0)
    C = torch.randn(6, 6, generator=g)
    cov_inv = torch.linalg.inv(C @ C.T + 6 * torch.eye(6))
    i = torch.randn(6, generator=g)
    W, target = torch.randn(5, 6, generator=g), torch.randn(5, generator=g)
    edit = RankOneEdit(i, None, cov_inv @ i, {}, beta=0.75, tau=0.1)
    x = torch.stack([i, torch.zeros(6)])[None]  # (1, 2, 6)
    out = edit.project(x, W, x @ W.T, target)
    torch.testing.assert_close(out[0, 0], torch.sigmoid(torch.tensor(2.5)) * target)
    torch.testing.assert_close(out[0, 1], torch.sigmoid(torch.tensor(-7.5)) * target)


def test_bad_method_inputs(trained, tmp_path):
    images = trained["ti"][5]
    with pytest.raises(ValueError, match="identifier"):
        get_method("dreambooth")(tiny_sd_pipeline(), _cfg(images, tmp_path / "d", "dreambooth",
                                                          {"identifier": "two words", "prior_loss_weight": 0}))
    with pytest.raises(ValueError, match="rank"):
        get_method("lora")(tiny_sd_pipeline(), _cfg(images, tmp_path / "l.safetensors", "lora", {"rank": 0}))
    with pytest.warns(UserWarning, match=r"ignores --method-arg \['rnak'\]"):
        get_method("lora")(tiny_sd_pipeline(), _cfg(images, tmp_path / "l.safetensors", "lora", {"rnak": 8}))
    with pytest.raises(ValueError, match="one method"):
        load_customized("tiny", [trained["ti"][2], trained["pplus"][2]])
    with pytest.raises(ValueError, match="same concept name"):
        load_customized("tiny", [trained["pplus"][2], trained["pplus"][2]])
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="infusion.json"):
        load_customized("tiny", [tmp_path / "plain"])


def test_dreambooth_can_train_the_text_encoder(trained, tmp_path):
    from diffusers import StableDiffusionPipeline

    images = trained["ti"][5]
    pipe = tiny_sd_pipeline()
    before = _snapshot(pipe)
    out = tmp_path / "db"
    train(_cfg(images, out, "dreambooth", {"train_text_encoder": True, "prior_loss_weight": 0}, steps=1),
          pipe=pipe, progress=False)
    after = _snapshot(pipe)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"unet", "text_encoder"}
    loaded = StableDiffusionPipeline.from_pretrained(str(out))
    for k, v in loaded.text_encoder.state_dict().items():
        assert torch.equal(v, after["text_encoder." + k]), k


def test_other_base_weights_warn(trained):
    with pytest.warns(UserWarning, match="other base weights"):
        load_customized(tiny_sd_pipeline(seed=1), [trained["ti"][2]])


def test_cli_train_and_generate_a_baseline(trained, tmp_path):
    """Two-step CLI smoke test: `infusion train --method pplus` then `infusion generate --show-base`."""
    from infusion.cli import main
    from infusion.core.images import read_png_params

    images = trained["ti"][5]
    out = tmp_path / "p.safetensors"
    assert main(["train", "--model", "tiny", "--images", str(images), "--name", "mycat", "--class-phrase", "cat",
                 "--out", str(out), "--method", "pplus", "--steps", "1", "--batch-size", "1"]) == 0
    gen = tmp_path / "gen"
    assert main(["generate", "--model", "tiny", "--concept", str(out), "--prompt", "a photo of <mycat>",
                 "--steps", "1", "--out", str(gen), "--show-base"]) == 0
    assert (gen / "grid.png").is_file() and (gen / "000-base.png").is_file()
    assert read_png_params(gen / "000.png")["concepts"] == [str(out)]


@pytest.mark.filterwarnings("ignore:.*other base weights")
@pytest.mark.parametrize("method", ["pplus", "perfusion"])
def test_our_formats_refuse_another_architecture(trained, method):
    """A model with other text width: a ValueError naming the mismatch, not a shape error mid-generation."""
    with pytest.raises(ValueError, match="width|wide"):
        load_customized(tiny_sd_pipeline(cross_dim=16), [trained[method][2]])


@pytest.mark.parametrize("method", IDS)
def test_every_method_honours_gradient_checkpointing(trained, tmp_path, method, checkpoint_calls):
    images, args = trained["dreambooth"][5], dict(next(c[4] for c in CASES if c[0] == method))
    for flag in (False, True):
        pipe = tiny_sd_pipeline()
        m = get_method(method)(pipe, _cfg(images, trained["dreambooth"][2] if method == "dreambooth" else tmp_path / "o",
                                          method, args, gradient_checkpointing=flag))
        assert pipe.unet.is_gradient_checkpointing == flag
        del checkpoint_calls[:]
        text = m.encode_captions(["a photo of a <mycat>"])
        z = torch.randn(1, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        m(z, torch.tensor([10]), text).float().pow(2).mean().backward()  # one training forward/backward
        assert (len(checkpoint_calls) > 0) == flag, (method, flag, len(checkpoint_calls))


def test_perfusion_covariance_uses_text_rows_only_and_the_inference_gate_is_stored(trained):
    """C over BOS..EOS rows (the reference's; padding is not text); generation gate 0.70 / 0.15 as perfusion-pytorch."""
    from infusion.methods.perfusion.training import covariance_prompts, input_covariance

    pipe = tiny_sd_pipeline()
    te, tok = pipe.text_encoder, pipe.tokenizer
    got = input_covariance(te, tok, "teddy bear", ridge=0.0)
    rows = []
    with torch.no_grad():
        for p in covariance_prompts("teddy bear"):
            ids = tok(p, return_tensors="pt").input_ids  # no padding: exactly BOS..EOS
            padded = tok(p, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
            rows.append(te(padded)[0][0, : ids.shape[1]])  # the same rows, computed in the padded context
    x = torch.cat(rows).float()
    torch.testing.assert_close(got, x.T @ x / len(x), rtol=1e-4, atol=1e-6)
    assert len(covariance_prompts("ball", "world")) > 2000  # the world's own captions on the world
    gen = load_customized("tiny", [trained["perfusion"][2]])
    edit = gen.customizations[0].edit
    assert (edit.beta, edit.tau) == (0.70, 0.15)


def test_generation_never_imports_the_trainer(tmp_path):
    """``load_customized`` + generation, and every method's loader, run in a fresh process without importing the
    trainer or any method's training module (registration is lazy: a ``MethodSpec`` names its classes)."""
    import subprocess
    import sys

    from conftest import random_concept

    from infusion.core.model_configs import tiny_sd_pipeline

    c = random_concept(tiny_sd_pipeline(), scale=1.0)
    c.save(tmp_path / "c.safetensors")
    code = f"""
import sys, torch
from infusion.customized import load_customized
from infusion.methods import available_methods, customization_class
m = load_customized("tiny", [{str(tmp_path / 'c.safetensors')!r}])
m(["a photo of <mycat>"], num_inference_steps=1, output_type="np", return_base=True)
for method in available_methods():
    customization_class(method)
print("METHODS", len(available_methods()))
bad = sorted(k for k in sys.modules if k.startswith("infusion.training") or k.endswith(".training"))
print("TRAINING_MODULES", bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "METHODS 7" in out.stdout, out.stdout
    assert "TRAINING_MODULES []" in out.stdout, out.stdout


def test_perfusion_concept_rows_only_gives_the_base_model_on_concept_free_prompts(trained, tmp_path):
    """``--method-arg concept_rows_only=true`` (a departure from the paper): a prompt without the concept gets the stock
    K/V in every attn2 (CFG's empty row too), so its image is the base model's bit for bit; without it the
    rank-one edit moves every row (the leak docs/results.md measures); prompts with the concept still change."""
    import json

    from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic

    src = trained["perfusion"][2]
    tensors, meta = read_safetensors(src)
    training = json.loads(meta["training"])
    training["method_args"] = {**training.get("method_args", {}), "concept_rows_only": True}
    save_safetensors_atomic(tensors, tmp_path / "rows.safetensors", {**meta, "training": json.dumps(training)})
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(num_inference_steps=3, output_type="np", return_base=True)
    for path, exact in ((tmp_path / "rows.safetensors", True), (src, False)):
        gen = load_customized("tiny", [path])
        free = gen(["a photo of a teddy bear on the beach"], generator=g(), **kw)
        assert np.array_equal(free.images, free.base_images) == exact, path
        named = gen(["a photo of <mycat> on the beach"], generator=g(), **kw)
        assert not np.array_equal(named.images, named.base_images)
    eps_gen = load_customized("tiny", [tmp_path / "rows.safetensors"])
    z, t = torch.randn(2, 4, 8, 8, generator=g()), torch.tensor([500, 500])
    eps = eps_gen.eps(z, t, ["a photo of a teddy bear", "a photo of <mycat>"])
    with eps_gen.customizations[0].disabled(eps_gen.pipe):
        base = eps_gen.eps(z, t, ["a photo of a teddy bear", "a photo of a teddy bear"])
    assert torch.equal(eps[0], base[0]) and not torch.equal(eps[1], base[1])


# -- base images (``return_base=True``) are the base model's, bit for bit ------------------------------------------


def _classic_tiny():
    """The tiny pipeline with diffusers' classic ``AttnProcessor`` everywhere (a base model whose attention is not the
    SDPA default: its base images must keep it, not fall back to ``AttnProcessor2_0``)."""
    from diffusers.models.attention_processor import AttnProcessor

    pipe = tiny_sd_pipeline()
    pipe.unet.set_attn_processor(AttnProcessor())
    return pipe


@pytest.mark.parametrize("method", IDS)
def test_base_images_keep_the_base_pipelines_attention(trained, method):
    """``load_customized(pipe, ...)`` on a base pipeline with its own attention processors: ``return_base`` images are
    that pipeline's images exactly (methods that swap attention processors used to restore ``AttnProcessor2_0``)."""
    path = trained[method][2]
    model = load_customized(_classic_tiny(), [path])
    kw = dict(num_inference_steps=2, guidance_scale=8.0, output_type="np")
    out = model(["a photo of <mycat>"], generator=torch.Generator().manual_seed(0), return_base=True, **kw)
    stock = _classic_tiny()("a photo of teddy bear", generator=torch.Generator().manual_seed(0), **kw).images
    if method == "infusion":  # its own two-stream sampler: F's attention is its processor's (float rounding)
        np.testing.assert_allclose(out.base_images, stock, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(out.base_images, stock)


@pytest.mark.parametrize("method", IDS)
def test_base_images_use_the_callers_generator_state(trained, method):
    """Base images start from the noise the customised images started from: one generator for several prompts
    (it used to be wrapped in a list of one, which the pipeline refuses), and a generator that had already drawn."""
    path = trained[method][2]
    model = load_customized("tiny", [path])
    stock = tiny_sd_pipeline()
    kw = dict(num_inference_steps=2, guidance_scale=8.0, output_type="np")

    def advanced():
        g = torch.Generator().manual_seed(5)
        torch.randn(7, generator=g)  # the caller drew from it before
        return g

    out = model(["a photo of <mycat>", "<mycat> on a beach"], generator=advanced(), return_base=True, **kw)
    ref = stock(["a photo of teddy bear", "teddy bear on a beach"], generator=advanced(), **kw).images
    np.testing.assert_allclose(out.base_images, ref, rtol=0, atol=1e-5)
    out = model(["a photo of <mycat>"], generator=[advanced()], return_base=True, **kw)
    ref = stock(["a photo of teddy bear"], generator=[advanced()], **kw).images
    np.testing.assert_allclose(out.base_images, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method, name, allowed, new, args", CASES, ids=IDS)
def test_bf16_holds_frozen_weights_in_bf16_and_gives_the_pipe_back(tmp_path, method, name, allowed, new, args):
    """``--mixed-precision bf16`` (diffusers' ``weight_dtype``): during the run every frozen weight of the UNet, text
    encoder and VAE is bfloat16 and every trained tensor float32 and finite; after it the caller's pipeline has its
    dtypes and, outside what the method trains, its values back bit for bit; exports (a checkpoint at step 1 and the
    output) see the float32 base weights."""
    from infusion.training import Trainer

    images = write_square_images(tmp_path / "images", n=2, size=32, stripes=False)
    pipe = tiny_sd_pipeline()
    before = _snapshot(pipe)
    seen = {}

    def during(report):
        if report.step == 1:
            params = [p for m in (pipe.unet, pipe.text_encoder, pipe.vae) for p in m.parameters()]
            seen["frozen"] = {p.dtype for p in params if not p.requires_grad}
            seen["frozen_unet"] = {p.dtype for p in pipe.unet.parameters() if not p.requires_grad}
            seen["trained"] = [(n, p.dtype, bool(torch.isfinite(p).all())) for n, p in run.method.trainable_state().items()
                               if p.is_floating_point()]  # (Perfusion's state holds a bool flag)

    out = tmp_path / name
    run = Trainer(_cfg(images, out, method, args, mixed_precision="bf16", checkpoint_every=1), pipe=pipe,
                  progress=False, callback=during)
    run.run()
    if method == "dreambooth":  # the step-1 checkpoint and the output are whole pipelines, written in fp32 as ever
        from safetensors import safe_open

        for folder in (out, out.with_name(f"{name}-step1")):
            files = list(folder.rglob("*.safetensors"))
            assert files
            for f in files:
                with safe_open(str(f), "pt") as st:
                    assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.float32}, f
    assert seen["frozen"] == {torch.bfloat16}
    assert seen["frozen_unet"] == ({torch.bfloat16} if method != "dreambooth" else set())  # DreamBooth trains it all
    assert seen["trained"] and all(d == torch.float32 and ok for _, d, ok in seen["trained"]), seen["trained"]
    after = _snapshot(pipe)
    assert {k: v.dtype for k, v in before.items()} == {k: after[k].dtype for k in before}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert all(any(re.match(a, k) for a in allowed) for k in changed), changed[:5]
    assert run.frozen.cast_count == 0
