"""Infusion on SDXL-shaped and SD2-shaped tiny models: exactness against the stock pipelines, a slow Eq. 7
sampler, composition, training that touches only the residuals, micro-conditioning, and the file checks
across families (DESIGN section 1, issue 13)."""

import numpy as np
import pytest
import torch
from conftest import random_concept, write_square_images

from infusion.methods.infusion.pipeline import InfusionPipeline, InfusionXLPipeline

STEPS = 3


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def xl():
    from infusion.core.model_configs import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline(seed=0)


def _xl_concept(pipe, *a, **k):
    c = random_concept(pipe, *a, **k)
    c.family = "sdxl"
    return c


def test_from_pipe_and_loader_pick_the_xl_pipeline(xl):
    from infusion.core.base_models import load_base_pipeline

    assert type(InfusionPipeline.from_pipe(xl)) is InfusionXLPipeline
    assert type(load_base_pipeline("tiny-sdxl", InfusionPipeline)) is InfusionXLPipeline
    assert type(load_base_pipeline("tiny-sd2", InfusionPipeline)) is InfusionPipeline


def test_xl_folder_loads_as_xl(xl, tmp_path):
    from infusion.core.model_families import family_of_files

    xl.save_pretrained(tmp_path / "sdxl")
    assert family_of_files(tmp_path / "sdxl") == "sdxl"
    pipe = InfusionPipeline.from_pretrained(str(tmp_path / "sdxl"))
    assert type(pipe) is InfusionXLPipeline
    from diffusers import StableDiffusionXLPipeline

    from infusion.core.base_models import load_base_pipeline

    assert type(load_base_pipeline(str(tmp_path / "sdxl"))) is StableDiffusionXLPipeline  # what `infusion train` loads


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_xl_zero_residual_equals_stock_and_untouched_prompts_are_bit_identical(xl, negative):
    from infusion.core.model_configs import tiny_sdxl_pipeline

    stock = tiny_sdxl_pipeline(seed=0)
    pipe = InfusionPipeline.from_pipe(xl)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=STEPS, guidance_scale=5.0, output_type="np", negative_prompt=negative)
    out = pipe("a photo of <mycat> on the beach", concepts=[_xl_concept(pipe, scale=0.0)], generator=_gen(), **kw)
    ref = stock("a photo of cat on the beach", generator=_gen(), **kw).images
    assert np.array_equal(out.images, out.base_images)  # C == F exactly
    np.testing.assert_allclose(out.base_images, ref, rtol=0, atol=1e-5)  # 4 rows vs 2: CPU kernels' rounding
    pipe.load_concept(_xl_concept(pipe, scale=5.0))
    plain = pipe("a photo of a dog", generator=_gen(), **kw)
    ref = stock("a photo of a dog", generator=_gen(), **kw).images
    assert np.array_equal(plain.images, ref) and np.array_equal(plain.base_images, ref)


def test_xl_own_maps_zero_residual_is_f_and_trains_only_residuals(xl, tmp_path):
    """maps=own on SDXL: a zero residual keeps C == F bit for bit; a nonzero one changes C, otherwise than the paper's
    maps do; training with it touches only the residuals and writes maps=own."""
    import dataclasses

    from infusion.training import TrainConfig, train

    pipe = InfusionPipeline.from_pipe(xl)
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": STEPS, "guidance_scale": 5.0, "output_type": "np"}
    zero = dataclasses.replace(_xl_concept(pipe, scale=0.0), maps="own")
    out = pipe("a photo of <mycat> on the beach", concepts=[zero], generator=_gen(), **kw)
    assert np.array_equal(out.images, out.base_images)
    paper = _xl_concept(pipe, scale=5.0)
    own = pipe("a photo of <mycat> on the beach", concepts=[dataclasses.replace(paper, maps="own")], generator=_gen(), **kw)
    theirs = pipe("a photo of <mycat> on the beach", concepts=[paper], generator=_gen(), **kw)
    assert not np.array_equal(own.images, own.base_images) and not np.array_equal(own.images, theirs.images)
    assert np.array_equal(own.base_images, theirs.base_images)
    folder = tmp_path / "images"
    write_square_images(folder, 2)
    before, mods = _frozen(xl)
    concept = train(TrainConfig(model="tiny-sdxl", images=str(folder), name="mycat", class_phrase="cat",
                                out=str(tmp_path / "c.safetensors"), steps=2, batch_size=2, resolution=16,
                                method_args={"maps": "own"}), pipe=xl, progress=False)
    assert _unchanged(before, mods) and concept.maps == "own"
    assert any(float(d.abs().max()) > 0 for d in concept.deltas.values())


def test_xl_concepts_compose_order_free_and_change_only_c(xl):
    pipe = InfusionPipeline.from_pipe(xl)
    pipe.set_progress_bar_config(disable=True)
    a, b = _xl_concept(pipe, "mycat", "cat", scale=3.0, seed=1), _xl_concept(pipe, "mydog", "dog", scale=3.0, seed=2)
    kw = dict(num_inference_steps=STEPS, guidance_scale=5.0, output_type="np")
    ab = pipe("<mycat> playing with <mydog>", concepts=[a, b], generator=_gen(), **kw)
    pipe.unload_concepts()
    ba = pipe("<mycat> playing with <mydog>", concepts=[b, a], generator=_gen(), **kw)
    assert np.array_equal(ab.images, ba.images)
    pipe.unload_concepts()
    only_a = pipe("<mycat> playing with dog", concepts=[a], generator=_gen(), **kw)
    assert np.array_equal(only_a.base_images, ab.base_images)
    assert np.abs(ab.images - only_a.images).max() > 1e-4


@torch.no_grad()
def test_xl_c_stream_equals_a_slow_eq7_sampler(xl):
    """Every attn2 of the depth-2 transformers, with CFG, pooled text and time ids: C == F's maps + V' = V + E Delta."""
    from test_pipeline_claims import _eq7_case, _slow_eq7_sampler

    _, c, g, fast, parsed = _eq7_case(xl, _xl_concept)
    cond, uncond, pooled, uncond_pooled = xl.encode_prompt(parsed.text, None, "cpu", 1, True, None)
    added = {"text_embeds": torch.cat([uncond_pooled, pooled]),
             "time_ids": torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).repeat(2, 1)}
    z = xl.prepare_latents(1, 4, 16, 16, cond.dtype, "cpu", _gen(), None)
    zf, zc = _slow_eq7_sampler(xl.unet, xl.scheduler, z, torch.cat([uncond, cond]), c.deltas, parsed.spans[0].positions,
                               g, STEPS, added_cond_kwargs=added)
    torch.testing.assert_close(fast.base_images, zf, rtol=1e-5, atol=1e-5)  # 4 rows vs 2: kernels' rounding
    torch.testing.assert_close(fast.images, zc, rtol=1e-4, atol=1e-5)
    assert (fast.images - fast.base_images).abs().max() > 1e-3


def test_xl_text_encoding_matches_diffusers(xl):
    from infusion.core.model_families import encode_texts

    states, pooled = encode_texts(xl, ["a photo of a cat", "a dog"])
    ref, _, ref_pooled, _ = xl.encode_prompt(["a photo of a cat", "a dog"], None, "cpu", 1, False)
    assert states.shape == (2, 77, 64) and pooled.shape == (2, 32)
    assert torch.equal(states, ref) and torch.equal(pooled, ref_pooled)


def _frozen(pipe):
    mods = [pipe.unet, pipe.vae, pipe.text_encoder] + ([pipe.text_encoder_2] if hasattr(pipe, "text_encoder_2") else [])
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in mods], mods


def _unchanged(before, mods):
    return all(all(torch.equal(s[k], v) for k, v in m.state_dict().items()) for s, m in zip(before, mods))


def test_xl_training_touches_only_residuals_and_passes_each_images_time_ids(xl, tmp_path):
    """Two 40x60 portrait images at resolution 16: original (60, 40), crop top-left (4, 0) in the 16x24 resize,
    target (16, 16), as diffusers' SDXL training scripts compute it; the file records the family and widths."""
    import PIL.Image

    from infusion.methods.infusion.concept import Concept
    from infusion.training import TrainConfig, train

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        PIL.Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    seen = []
    hook = xl.unet.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    before, mods = _frozen(xl)
    concept = train(TrainConfig(model="tiny-sdxl", images=str(folder), name="mycat", class_phrase="cat",
                                out=str(tmp_path / "c.safetensors"), steps=3, batch_size=2, resolution=16),
                    pipe=xl, progress=False)
    hook.remove()
    assert _unchanged(before, mods)
    assert any(float(d.abs().max()) > 0 for d in concept.deltas.values())
    want = torch.tensor([60.0, 40.0, 4.0, 0.0, 16.0, 16.0])
    assert seen and all(torch.equal(ids, want.expand_as(ids)) for ids in seen)
    loaded = Concept.load(tmp_path / "c.safetensors")
    assert loaded.family == "sdxl" and set(loaded.deltas) == set(concept.deltas)


def test_sdxl_concept_file_size_from_its_config():
    """SDXL 1.0 base: 70 attn2 layers (10 of width 640, 60 of 1280) -> 83,200 values, 166,400 bytes fp16 per token."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from infusion.core.model_configs import sdxl_unet_config
    from infusion.methods.infusion.processor import layer_widths

    with init_empty_weights():
        unet = UNet2DConditionModel(**sdxl_unet_config())
    widths = layer_widths(unet)
    assert len(widths) == 70
    assert sorted(set(widths.values())) == [640, 1280] and list(widths.values()).count(640) == 10
    assert sum(widths.values()) == 83_200


def test_concepts_do_not_cross_families(xl, tiny_pipe, tmp_path):
    from infusion.methods.infusion.concept import Concept

    sd = InfusionPipeline.from_pipe(tiny_pipe)
    c = random_concept(sd)
    c.family = "sd"
    c.save(tmp_path / "sd.safetensors")
    with pytest.raises(ValueError, match=r"Stable Diffusion 1.x/2.x model .* this SDXL model"):
        InfusionPipeline.from_pipe(xl).load_concept(tmp_path / "sd.safetensors")
    x = _xl_concept(InfusionPipeline.from_pipe(xl))
    x.save(tmp_path / "xl.safetensors")
    with pytest.raises(ValueError, match=r"SDXL model .* this Stable Diffusion 1.x/2.x model"):
        sd.load_concept(Concept.load(tmp_path / "xl.safetensors"))


def test_nan_concept_file_is_refused_at_load(tiny_pipe, tmp_path):
    from infusion.core.safetensors_io import save_safetensors_atomic
    from infusion.methods.infusion.concept import Concept

    c = random_concept(tiny_pipe)
    c.save(tmp_path / "ok.safetensors")
    tensors = {k: v.clone() for k, v in c.deltas.items()}
    first = sorted(tensors)[0]
    tensors[first][0, 0] = float("nan")
    save_safetensors_atomic({k: v.half() for k, v in tensors.items()}, tmp_path / "nan.safetensors", c.metadata())
    with pytest.raises(ValueError, match="NaN or Inf"):
        Concept.load(tmp_path / "nan.safetensors")


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
@pytest.mark.parametrize("bad_step", [3, 4])
def test_training_that_goes_non_finite_stops_and_keeps_the_last_good_checkpoint(model, bad_step, tmp_path, monkeypatch):
    """A residual turned NaN by the 3rd optimizer step makes the 4th step's loss NaN; by the 4th, the checkpoint at
    step 4 would save it. Both stop with FloatingPointError; the step-2 checkpoint stays intact and finite."""
    from infusion.core.safetensors_io import read_safetensors
    from infusion.methods.infusion.concept import Concept
    from infusion.training import TrainConfig, train
    from infusion.training.trainer import state_path, step_path

    real, calls = torch.optim.AdamW.step, []

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        calls.append(1)
        if len(calls) == bad_step:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    images = write_square_images(tmp_path / "images", n=2)
    out = tmp_path / "c.safetensors"
    cfg = TrainConfig(model=model, images=str(images), name="mycat", class_phrase="cat", out=str(out), steps=6,
                      batch_size=1, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match="intact"):
        train(cfg, progress=False)
    tensors, meta = read_safetensors(state_path(out), "state")
    assert meta["step"] == "2" and all(torch.isfinite(v).all() for v in tensors.values())
    assert Concept.load(step_path(out, 2)).name == "mycat"
    assert not out.exists() and not step_path(out, 4).exists()


def test_sd2_shaped_model_trains_and_is_exact(tmp_path):
    """SD 2.x traits (GELU text encoder of its own width, "!" padding, linear projections, v-prediction): zero
    residual == stock, untouched prompts bit-identical, training changes only the residuals."""
    from infusion.core.model_configs import tiny_sd2_pipeline
    from infusion.training import TrainConfig, train

    stock, base = tiny_sd2_pipeline(seed=0), tiny_sd2_pipeline(seed=0)
    assert base.scheduler.config.prediction_type == "v_prediction" and base.unet.config.use_linear_projection
    before, mods = _frozen(base)
    concept = train(TrainConfig(model="tiny-sd2", images=str(write_square_images(tmp_path / "im", n=2)), name="mycat",
                                class_phrase="cat", out=str(tmp_path / "c.safetensors"), steps=2, batch_size=1),
                    pipe=base, progress=False)
    assert _unchanged(before, mods) and concept.family == "sd"
    pipe = InfusionPipeline.from_pipe(base)
    kw = dict(num_inference_steps=STEPS, guidance_scale=5.0, output_type="np")
    zero = random_concept(pipe, scale=0.0)
    out = pipe("a photo of <mycat>", concepts=[zero], generator=_gen(), **kw)
    np.testing.assert_allclose(out.base_images, stock("a photo of cat", generator=_gen(), **kw).images, rtol=0, atol=1e-5)
    assert np.array_equal(out.images, out.base_images)
    pipe.load_concept(concept)
    plain = pipe("a photo of a dog", generator=_gen(), **kw)
    assert np.array_equal(plain.images, stock("a photo of a dog", generator=_gen(), **kw).images)


def test_cli_trains_and_generates_on_sdxl(tmp_path, capsys):
    from infusion.cli import main

    images = write_square_images(tmp_path / "images", n=2)
    out = tmp_path / "mycat.safetensors"
    assert main(["train", "--model", "tiny-sdxl", "--images", str(images), "--name", "mycat", "--class-phrase", "cat",
                 "--out", str(out), "--steps", "2", "--batch-size", "1"]) == 0
    assert main(["generate", "--model", "tiny-sdxl", "--concept", str(out), "--prompt", "a photo of <mycat>",
                 "--steps", "2", "--out", str(tmp_path / "gen"), "--show-base"]) == 0
    assert (tmp_path / "gen" / "000.png").is_file() and (tmp_path / "gen" / "000-base.png").is_file()


def _train_xl(xl, tmp_path, method, out, steps=2, lr=None, **args):
    from infusion.training import TrainConfig, train

    images = write_square_images(tmp_path / "images", n=2)
    return train(TrainConfig(model="tiny-sdxl", images=str(images), name="mycat", class_phrase="cat", out=str(out),
                             method=method, steps=steps, lr=lr, batch_size=1, method_args=args), pipe=xl, progress=False)


def test_xl_textual_inversion_file_loads_into_both_encoders_with_diffusers(xl, tmp_path):
    """One vector per encoder, saved as {"clip_l", "clip_g"}; diffusers' load_textual_inversion (twice, as its SDXL
    docs show) gives the same text states the trainer used, and only the token changed."""
    from safetensors.torch import load_file

    from infusion.core.model_configs import tiny_sdxl_pipeline
    from infusion.core.model_families import encode_texts
    from infusion.core.tokens import encode_with_tokens
    from infusion.customized import load_customized

    before, mods = _frozen(xl)
    _train_xl(xl, tmp_path, "ti", tmp_path / "ti.safetensors", steps=3)
    assert _unchanged(before, mods)
    state = load_file(str(tmp_path / "ti.safetensors"))
    assert set(state) == {"clip_l", "clip_g"} and state["clip_l"].shape == (1, 32) and state["clip_g"].shape == (1, 32)
    fresh = tiny_sdxl_pipeline(seed=0)
    fresh.load_textual_inversion(state["clip_l"], token="<mycat>", text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer)
    fresh.load_textual_inversion(state["clip_g"], token="<mycat>", text_encoder=fresh.text_encoder_2,
                                 tokenizer=fresh.tokenizer_2)
    ref, _, ref_pooled, _ = fresh.encode_prompt("a photo of <mycat>", None, "cpu", 1, False)
    ours, pooled, _, _ = encode_with_tokens([xl.text_encoder, xl.text_encoder_2], [xl.tokenizer, xl.tokenizer_2],
                                            ["a photo of <mycat>"], "mycat", [state["clip_l"][0], state["clip_g"][0]])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=1e-6)
    assert not torch.allclose(ref, encode_texts(tiny_sdxl_pipeline(seed=0), ["a photo of cat"])[0])
    model = load_customized(tiny_sdxl_pipeline(seed=0), [tmp_path / "ti.safetensors"])
    out = model(["a photo of <mycat>"], num_inference_steps=2, generator=_gen(), output_type="np", return_base=True)
    assert out.images.shape == out.base_images.shape == (1, 16, 16, 3)
    # the base images are the stock pipeline's for the class phrase (same noise); the learned token changes the image
    stock = tiny_sdxl_pipeline(seed=0)("a photo of cat", num_inference_steps=2, generator=_gen(), guidance_scale=8.0,
                                       output_type="np").images
    np.testing.assert_allclose(out.base_images, stock, rtol=0, atol=1e-6)
    assert np.abs(out.images - out.base_images).max() > 1e-3


def test_xl_lora_file_loads_with_diffusers_and_base_images_are_stock(xl, tmp_path):
    from infusion.core.model_configs import tiny_sdxl_pipeline
    from infusion.customized import load_customized

    _train_xl(xl, tmp_path, "lora", tmp_path / "lora.safetensors", steps=2, rank=2)
    stock = tiny_sdxl_pipeline(seed=0)
    kw = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np")
    ref = stock("a photo of cat", generator=_gen(), **kw).images
    fresh = tiny_sdxl_pipeline(seed=0)
    fresh.load_lora_weights(str(tmp_path / "lora.safetensors"))  # diffusers' own loader
    assert any("lora" in n for n, _ in fresh.unet.named_parameters())
    model = load_customized(tiny_sdxl_pipeline(seed=0), [tmp_path / "lora.safetensors"])
    out = model(["a photo of <mycat>"], generator=_gen(), return_base=True, **kw)
    np.testing.assert_array_equal(out.base_images, ref)  # LoRA disabled == stock, same noise
    assert np.abs(out.images - out.base_images).max() > 0


def test_xl_dreambooth_with_prior_saves_an_sdxl_folder(xl, tmp_path):
    """Each training step's UNet batch holds the instance row and a class-prior row (2 generated class images, in
    ``<out>.prior``); the folder is the trained SDXL model exactly (its UNet equals the one trained in memory, and
    the loaded generator samples what the trained pipeline samples), and it differs from the base model, whose
    images are the stock pipeline's."""
    from diffusers import StableDiffusionXLPipeline

    from infusion.core.model_configs import tiny_sdxl_pipeline
    from infusion.customized import load_customized

    unet_before = {k: v.clone() for k, v in xl.unet.state_dict().items()}
    out = tmp_path / "db"
    rows = []
    hook = xl.unet.register_forward_hook(lambda m, args, kw, o: rows.append(args[0].shape[0]) if m.training else None,
                                         with_kwargs=True)
    _train_xl(xl, tmp_path, "dreambooth", out, steps=2, num_class_images=2, prior_steps=2, lr=1e-3)
    hook.remove()
    assert rows == [2, 2]  # batch_size 1: the instance row and one prior row, each step
    assert len(list(out.with_name("db.prior").glob("*.png"))) == 2
    loaded = StableDiffusionXLPipeline.from_pretrained(str(out))
    trained = xl.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.unet.state_dict().items())
    assert any(not torch.equal(unet_before[k], v) for k, v in loaded.unet.state_dict().items())
    model = load_customized("tiny-sdxl", [out])
    assert isinstance(model.pipe, StableDiffusionXLPipeline)
    res = model(["a photo of <mycat>"], num_inference_steps=2, generator=_gen(), output_type="np", return_base=True)
    xl.unet.eval()
    ref = xl("a photo of sks cat", num_inference_steps=2, generator=_gen(), guidance_scale=8.0, output_type="np").images
    np.testing.assert_allclose(res.images, ref, rtol=0, atol=1e-5)  # the folder gives the trained model
    stock = tiny_sdxl_pipeline(seed=0)("a photo of cat", num_inference_steps=2, generator=_gen(), guidance_scale=8.0,
                                       output_type="np").images
    np.testing.assert_allclose(res.base_images, stock, rtol=0, atol=1e-6)
    assert np.abs(res.images - res.base_images).max() > 1e-3
    with pytest.raises(ValueError, match="train_text_encoder"):
        _train_xl(xl, tmp_path, "dreambooth", tmp_path / "db2", train_text_encoder=True)


@pytest.mark.parametrize("method", ["pplus", "custom-diffusion", "perfusion"])
def test_unported_methods_refuse_sdxl_naming_the_supported_ones(xl, tmp_path, method):
    with pytest.raises(ValueError, match=r"supports Stable Diffusion 1.x/2.x models only.*SDXL use one of: "
                                         r"dreambooth, infusion, lora, ti"):
        _train_xl(xl, tmp_path, method, tmp_path / "x")


def test_mlm_regulariser_refuses_sdxl_clearly(xl, tmp_path):
    from infusion.training import TrainConfig, train

    images = write_square_images(tmp_path / "images", n=2)
    (tmp_path / "ctx.safetensors").write_bytes(b"")  # never read: the refusal comes first
    with pytest.raises(ValueError, match="MLM regulariser is ported to Stable Diffusion 1.x/2.x"):
        train(TrainConfig(model="tiny-sdxl", images=str(images), name="mycat", class_phrase="cat",
                          out=str(tmp_path / "t.safetensors"), method="ti", steps=1, mlm_lambda=1e-3,
                          contextualizer=str(tmp_path / "ctx.safetensors")), pipe=xl, progress=False)


def test_xl_lfd_and_eps_accept_sdxl(xl, tmp_path):
    """The customised noise predictor on SDXL: zero residual -> the base UNet's eps, exactly as UNetEps gives it."""
    from infusion.customized import load_customized
    from infusion.metrics.eps import UNetEps

    pipe = InfusionPipeline.from_pipe(xl)
    c = _xl_concept(pipe, scale=0.0)
    c.save(tmp_path / "z.safetensors")
    model = load_customized(pipe, [tmp_path / "z.safetensors"])
    z, t = torch.randn(2, 4, 8, 8, generator=_gen()), torch.tensor([500, 100])
    eps = model.eps(z, t, ["a photo of <mycat>", "a dog"])
    ref = UNetEps.from_pipeline(xl)(z, t, ["a photo of cat", "a dog"])
    torch.testing.assert_close(eps, ref, rtol=0, atol=1e-5)


def test_xl_training_with_gradient_checkpointing_and_bf16(xl, tmp_path, checkpoint_calls):
    """bf16 on SDXL: the UNet runs in bfloat16 (accelerate's autocast, frozen weights cast) through checkpointed
    blocks, the Deltas stay float32 master weights and the file holds float16; the result points where the float32 run's does, not equal to it."""
    from safetensors import safe_open

    from infusion.core.model_configs import tiny_sdxl_pipeline
    from infusion.training import TrainConfig, train

    images = write_square_images(tmp_path / "images", n=2)
    kw = dict(model="tiny-sdxl", images=str(images), name="mycat", class_phrase="cat", steps=2, batch_size=1)
    seen, encoders = set(), set()
    base = {f"{m}.{k}": v.clone() for m in ("unet", "text_encoder", "text_encoder_2")
            for k, v in getattr(xl, m).state_dict().items()}
    hook = xl.unet.conv_in.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    concept = train(TrainConfig(out=str(tmp_path / "c.safetensors"), mixed_precision="bf16", gradient_checkpointing=True,
                                **kw), pipe=xl, progress=False,
                    callback=lambda r: encoders.update(p.dtype for e in (xl.text_encoder, xl.text_encoder_2)
                                                       for p in e.parameters()))
    hook.remove()
    assert encoders == {torch.bfloat16}  # both frozen encoders held in bf16 during the run (diffusers' weight_dtype)
    after = {f"{m}.{k}": v for m in ("unet", "text_encoder", "text_encoder_2") for k, v in getattr(xl, m).state_dict().items()}
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in base.items())  # given back as it came
    assert checkpoint_calls  # the UNet's blocks ran through torch.utils.checkpoint
    assert torch.bfloat16 in seen
    assert all(d.dtype == torch.float32 and torch.isfinite(d).all() for d in concept.deltas.values())
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    full = train(TrainConfig(out=str(tmp_path / "f.safetensors"), **kw), pipe=tiny_sdxl_pipeline(seed=0), progress=False)
    a = torch.cat([d.flatten() for d in concept.deltas.values()])
    b = torch.cat([full.deltas[k].flatten() for k in concept.deltas])
    assert b.abs().max() > 0 and not torch.equal(a, b)
    cosine = float(a @ b / (a.norm() * b.norm()))
    assert cosine > 0.95, cosine  # the same direction of learning (Adam moves small-gradient values by lr: not equal)


def test_single_file_family_is_read_from_its_keys(tmp_path):
    """An SDXL single-file checkpoint holds the second text encoder under conditioner.embedders.1 (no config needed
    to tell the family); an SD 1.x/2.x one does not; a --model-config folder decides when given."""
    from safetensors.torch import save_file

    from infusion.core.model_families import family_of_files

    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(tmp_path / "xl.safetensors"))
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2)},
              str(tmp_path / "sd.safetensors"))
    assert family_of_files(tmp_path / "xl.safetensors") == "sdxl"
    assert family_of_files(tmp_path / "sd.safetensors") == "sd"
    assert family_of_files("some/hub-id") is None
