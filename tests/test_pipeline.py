"""InfusionPipeline: identity with the base model where the math promises it, composition, errors."""

import numpy as np
import pytest
import torch

from conftest import random_concept
from infusion.methods.infusion.pipeline import InfusionPipeline

STEPS = 4


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _run(pipe, prompt, concepts=(), seed=0, **kw):
    return pipe(prompt, concepts=list(concepts), num_inference_steps=STEPS, generator=_gen(seed), output_type="np", **kw)


def test_zero_deltas_give_the_base_pipelines_images(tiny_pipe):
    from infusion.core.model_configs import tiny_sd_pipeline

    base = tiny_sd_pipeline(seed=0)  # same weights, stock processors
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    zero = random_concept(pipe, scale=0.0)
    out = _run(pipe, "a photo of <mycat> on the beach", [zero])
    ref = base("a photo of cat on the beach", num_inference_steps=STEPS, guidance_scale=8.0, generator=_gen(),
               output_type="np").images
    assert np.array_equal(out.images, out.base_images)  # C == F exactly
    # F == stock pipeline: equal up to the CPU kernels' batch-size-dependent rounding (4 rows vs 2)
    np.testing.assert_allclose(out.base_images, ref, rtol=0, atol=1e-5)


def test_prompt_without_concept_is_bit_identical_to_base(tiny_pipe):
    from infusion.core.model_configs import tiny_sd_pipeline

    base = tiny_sd_pipeline(seed=0)
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    pipe.load_concept(random_concept(pipe, scale=5.0))
    _run(pipe, "a photo of <mycat> on the beach")  # the Infusion processors are installed and hold Deltas now
    from infusion.methods.infusion.processor import infusion_processors

    assert infusion_processors(pipe.unet)
    out = _run(pipe, "a photo of a cat on the beach")
    ref = base("a photo of a cat on the beach", num_inference_steps=STEPS, guidance_scale=8.0, generator=_gen(),
               output_type="np").images
    assert np.array_equal(out.images, ref)
    assert np.array_equal(out.base_images, ref)


def test_nonzero_delta_changes_only_the_customised_stream(tiny_pipe):
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    zero = _run(pipe, "a photo of <mycat>", [random_concept(pipe, scale=0.0)])
    pipe.unload_concepts()
    big = _run(pipe, "a photo of <mycat>", [random_concept(pipe, scale=3.0)])
    assert np.array_equal(big.base_images, zero.base_images)
    assert np.abs(big.images - zero.images).max() > 1e-3


def test_two_concepts_compose_and_order_does_not_matter(tiny_pipe):
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    a = random_concept(pipe, "mycat", "cat", scale=3.0, seed=1)
    b = random_concept(pipe, "mydog", "dog", scale=3.0, seed=2)
    prompt = "<mycat> playing with <mydog>"
    ab = _run(pipe, prompt, [a, b])
    pipe.unload_concepts()
    ba = _run(pipe, prompt, [b, a])
    assert np.array_equal(ab.images, ba.images)
    pipe.unload_concepts()
    only_a = _run(pipe, "<mycat> playing with dog", [a])
    assert np.abs(ab.images - only_a.images).max() > 1e-4  # the second concept contributes


def test_two_concepts_of_one_class_are_distinct_by_position(tiny_pipe):
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    a = random_concept(pipe, "cat1", "cat", scale=3.0, seed=1)
    b = random_concept(pipe, "cat2", "cat", scale=3.0, seed=2)
    ab = _run(pipe, "<cat1> next to <cat2>", [a, b])
    ba = _run(pipe, "<cat2> next to <cat1>", [a, b])
    assert np.array_equal(ab.base_images, ba.base_images)  # same text for F
    assert np.abs(ab.images - ba.images).max() > 1e-4


def test_batch_and_num_images(tiny_pipe):
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    c = random_concept(pipe, scale=2.0)
    out = pipe(["<mycat> on grass", "a tree"], concepts=[c], num_images_per_prompt=2, num_inference_steps=2,
               generator=_gen(), output_type="np")
    assert out.images.shape == (4, 16, 16, 3) and out.base_images.shape == (4, 16, 16, 3)
    assert np.array_equal(out.images[2:], out.base_images[2:])  # "a tree" has no concept
    assert not np.array_equal(out.images[:2], out.base_images[:2])


def test_errors(tiny_pipe):
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    c = random_concept(pipe)
    with pytest.raises(ValueError, match="unknown concept <mydog>"):
        _run(pipe, "a <mydog>", [c])
    bad = random_concept(pipe)
    layer = next(iter(bad.deltas))
    bad.deltas[layer] = torch.zeros(1, 7)
    with pytest.raises(ValueError, match=f"layer {layer} has width 7"):
        pipe.load_concept(bad)
    missing = random_concept(pipe)
    del missing.deltas[layer]
    with pytest.raises(ValueError, match="layers missing from the file"):
        pipe.load_concept(missing)
    other = random_concept(pipe)
    other.base_fingerprint = "0000000000000000"
    with pytest.warns(UserWarning, match="trained on other base weights"):
        pipe.load_concept(other)
    with pytest.raises(ValueError, match="two concepts are named <mycat>"):
        _run(pipe, "a <mycat>", [c, random_concept(pipe, seed=3)])
    with pytest.raises(ValueError, match="tokenizes to 2 tokens"):
        _run(pipe, "<mycat>ish", [c])  # "catish" merges into other BPE pieces


def test_sd2_style_unet_linear_projection_and_v_prediction(concept_images, tmp_path, monkeypatch):
    """SD2.x traits: per-block head dims, linear projections in transformers, v-prediction (the trainer's target
    is the velocity, not the noise)."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    import infusion.training.trainer as trainer_mod

    velocities, targets = [], []
    real_v, real_mse = DDPMScheduler.get_velocity, trainer_mod.F.mse_loss
    monkeypatch.setattr(DDPMScheduler, "get_velocity", lambda self, *a: velocities.append(real_v(self, *a)) or velocities[-1])
    monkeypatch.setattr(trainer_mod.F, "mse_loss", lambda pred, target, **k: targets.append(target) or real_mse(pred, target, **k))

    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training import TrainConfig, train

    base = tiny_sd_pipeline()
    torch.manual_seed(0)
    base.unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
    )
    base.scheduler = DDIMScheduler.from_config(base.scheduler.config, prediction_type="v_prediction")
    concept = train(TrainConfig(model="tiny-sd2", images=str(concept_images), name="mycat", class_phrase="cat",
                                out=str(tmp_path / "c.safetensors"), steps=3, batch_size=2), pipe=base, progress=False)
    assert len(concept.deltas) == 7  # every attn2: 2 down + 1 mid + 2 x 2 up
    assert len(velocities) == 3 and len(targets) == 3
    assert all(torch.equal(tg, v[: len(tg)]) for tg, v in zip(targets, velocities))  # loss target == velocity
    pipe = InfusionPipeline.from_pipe(base)
    out = _run(pipe, "a photo of <mycat>", [concept])
    assert out.images.shape == (1, 16, 16, 3) and np.isfinite(out.images).all()


def test_return_attention_maps_do_not_change_images(tiny_pipe):
    """``return_attention``: per concept and resolution (B, h, w) maps of F's attention on its tokens, zero where a
    prompt does not name it, each a mean of softmax columns (in [0, 1]); the images are those of a plain call."""
    pipe = InfusionPipeline.from_pipe(tiny_pipe)
    c = random_concept(pipe, scale=2.0)
    prompts = ["a photo of <mycat> on the beach", "a tree"]
    out = _run(pipe, prompts, [c], return_attention=True)
    plain = _run(pipe, prompts, [c])
    assert np.array_equal(out.images, plain.images) and plain.attention is None
    maps = out.attention["mycat"]
    assert sorted(maps) == [(4, 4), (8, 8)]  # the tiny UNet's two attn2 resolutions at 16 px
    for m in maps.values():
        assert m.shape[0] == 2 and torch.all(m[1] == 0) and float(m[0].min()) >= 0 and float(m[0].max()) <= 1
        assert float(m[0].sum()) > 0


def test_from_pipe_prints_no_empty_float32_warning_but_a_real_one_still_shows(tiny_pipe):
    """diffusers' ``ModelMixin.to(dtype=...)`` warns "should be kept in float32: []" even with no such module;
    ``from_pipe`` casts every module, so each conversion printed it. A non-empty list must still reach the user."""
    import logging

    from infusion.methods.infusion.pipeline import InfusionPipeline

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("diffusers.models.modeling_utils")  # logger filters run before its handlers
    log.addHandler(handler)
    try:
        InfusionPipeline.from_pipe(tiny_pipe)
        assert not [m for m in seen if "kept in float32" in m]
        log.warning("There are modules in X that should be kept in float32: ['norm']. Casting directly")
        assert [m for m in seen if "kept in float32: ['norm']" in m]
    finally:
        log.removeHandler(handler)


def test_no_torchvision_fallback_warning_once_infusion_is_imported():
    """transformers warns that ``CLIPImageProcessor`` falls back to its PIL form without torchvision (which the project
    leaves out on purpose); importing diffusers' pipelines after ``infusion`` prints no such line, while the same
    import without ``infusion`` does (so the check can fail)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: transformers has nothing to fall back from")

    def stderr(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr

    pipelines = "from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline"
    assert "requires torchvision" in stderr(pipelines)
    assert "requires torchvision" not in stderr("import infusion; " + pipelines)
