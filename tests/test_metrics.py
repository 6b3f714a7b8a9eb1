"""Metrics: W2 (Frechet form), latent Fisher divergence (incl. Infusion's exact 0), CLIP/DINO scorers."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from infusion.methods.infusion.concept import Concept
from infusion.metrics import (
    CLIPScorer,
    DINOScorer,
    FunctionScorer,
    InfusionEps,
    UNetEps,
    gaussian_w2_squared,
    latent_fisher_divergence,
    latent_w2,
    latent_w2_distance,
    pool_latents,
    scoring_texts,
    wasserstein2,
)
from infusion.methods.infusion.processor import layer_widths
from infusion.core.model_configs import load_tokenizer, tiny_sd_pipeline

# ----------------------------------------------------------------------------- W2


def test_w2_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    s = a @ a.T + 0.1 * np.eye(6)
    assert gaussian_w2_squared(np.ones(6), s, np.ones(6), s) == pytest.approx(0.0, abs=1e-10)
    x = rng.normal(size=(200, 5))
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-10)


def test_w2_mean_shift_is_squared_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    shift = np.array([0.5, -2.0, 1.0, 3.0])
    assert wasserstein2(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_w2_diagonal_closed_form():
    # For commuting (diagonal) covariances W2^2 = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 0.0])
    want = 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert gaussian_w2_squared(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_w2_singular_covariance_matches_the_closed_form():
    x = np.zeros((10, 3))
    x[:, 0] = np.arange(10)  # rank-1 covariance diag(s, 0, 0), mean (4.5, 0, 0)
    y = x[:, [1, 0, 2]]  # diag(0, s, 0), mean (0, 4.5, 0)
    s = np.var(np.arange(10), ddof=1)
    # S1^1/2 S2 S1^1/2 = 0, so W2^2 = |mu1 - mu2|^2 + tr S1 + tr S2 = 2 * 4.5^2 + 2 s
    assert wasserstein2(x, y) == pytest.approx(2 * 4.5**2 + 2 * s, rel=1e-12)


def test_latent_w2_pools_to_16_dims():
    z = torch.randn(8, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert pool_latents(z).shape == (8, 16)
    assert latent_w2(z, z + 1.0) == pytest.approx(16.0, rel=1e-9)  # shift of 1 in each of 16 pooled dims
    with pytest.raises(ValueError, match=r"\[N, C, h, w\]"):
        pool_latents(torch.randn(8, 16))
    with pytest.raises(ValueError, match="at least 2 samples"):
        wasserstein2(np.zeros((1, 3)), np.zeros((5, 3)))


def test_w2_distance_is_zero_on_one_set_and_the_shift_on_a_shifted_set():
    """Not squared: a set shifted by s (a vector over the 16 pooled dims) is ||s|| away."""
    z = torch.randn(12, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert latent_w2_distance(z, z.clone()) == pytest.approx(0.0, abs=1e-6)
    shift = torch.arange(4, dtype=torch.float64).view(1, 4, 1, 1) * 0.5  # channel c moves by c/2
    expected = float(torch.sqrt((shift.flatten() ** 2).sum() * 4))  # 4 pooled cells per channel
    assert latent_w2_distance(z, z + shift) == pytest.approx(expected, rel=1e-6)
    assert latent_w2(z, z + shift) == pytest.approx(expected**2, rel=1e-6)


# ----------------------------------------------------------------------------- LFD

PROMPTS = ["a photo of a dog", "a red car on the beach", "a cat", "a tree in the snow"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


def _latents(n=4, seed=0):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_lfd_self_is_zero_and_grows_with_perturbation(pipe):
    base = UNetEps.from_pipeline(pipe)
    lat = _latents()
    same = latent_fisher_divergence(base, base, lat, PROMPTS, pipe.scheduler, progress=False)
    assert same.mean == 0.0 and same.n == 4

    values = []
    for scale in (1e-3, 1e-2):
        other = copy.deepcopy(pipe)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in other.unet.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))
        values.append(
            latent_fisher_divergence(base, UNetEps.from_pipeline(other), lat, PROMPTS, pipe.scheduler, progress=False)
        )
    assert 0 < values[0].mean < values[1].mean
    assert values[0].stderr > 0


def test_lfd_is_deterministic_under_seed(pipe):
    other = copy.deepcopy(pipe)
    with torch.no_grad():
        other.unet.conv_out.bias.add_(0.1)
    a, b = UNetEps.from_pipeline(pipe), UNetEps.from_pipeline(other)
    r1 = latent_fisher_divergence(a, b, _latents(), PROMPTS, pipe.scheduler, repeats=2, seed=3, progress=False)
    r2 = latent_fisher_divergence(a, b, _latents(), PROMPTS, pipe.scheduler, repeats=2, seed=3, progress=False)
    np.testing.assert_array_equal(r1.per_sample, r2.per_sample)
    assert r1.n == 8
    # a bias shift of 0.1 on every one of 4*8*8 outputs: 1/2 * 256 * 0.01 = 1.28 for every sample
    np.testing.assert_allclose(r1.per_sample, 1.28, rtol=1e-5)


def test_lfd_converts_v_prediction_to_eps(pipe):
    """A v shift of 0.1 is an eps shift of 0.1 * sqrt(alpha_bar_t): 1.28 * alpha_bar_t per sample."""
    from diffusers import DDIMScheduler

    v_sched = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    other = copy.deepcopy(pipe)
    with torch.no_grad():
        other.unet.conv_out.bias.add_(0.1)
    a, b = UNetEps.from_pipeline(pipe), UNetEps.from_pipeline(other)
    r = latent_fisher_divergence(a, b, _latents(), PROMPTS, v_sched, repeats=2, seed=3, progress=False)
    ts = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3))  # the estimator's t draw
    np.testing.assert_allclose(r.per_sample, 1.28 * v_sched.alphas_cumprod[ts].double().numpy(), rtol=1e-4)
    with pytest.raises(ValueError, match="not 'sample'"):
        latent_fisher_divergence(a, b, _latents(), PROMPTS, DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="sample"), progress=False)


def test_lfd_input_errors(pipe):
    e = UNetEps.from_pipeline(pipe)
    with pytest.raises(ValueError, match="one caption per latent"):
        latent_fisher_divergence(e, e, _latents(), PROMPTS[:3], pipe.scheduler, progress=False)


def _random_concept(unet, name="mydog", phrase="dog", scale=0.5):
    gen = torch.Generator().manual_seed(7)
    deltas = {k: scale * torch.randn(1, d, generator=gen) for k, d in layer_widths(unet).items()}
    return Concept(name=name, class_phrase=phrase, deltas=deltas)


def test_infusion_lfd_is_exactly_zero_on_non_customised_prompts(pipe):
    base = UNetEps.from_pipeline(pipe)
    custom_pipe = copy.deepcopy(pipe)
    concept = _random_concept(custom_pipe.unet)
    infusion = InfusionEps.from_pipeline(custom_pipe, [concept])
    lat = _latents().to(memory_format=torch.channels_last)  # as a VAE returns them: still exact
    r = latent_fisher_divergence(base, infusion, lat, PROMPTS, pipe.scheduler, repeats=2, progress=False)
    assert r.mean == 0.0 and np.all(r.per_sample == 0.0)
    # The same Deltas do change the model where the concept is named (the test could fail).
    named = [p.replace("dog", "<mydog>") if "dog" in p else p for p in PROMPTS]
    r_named = latent_fisher_divergence(base, infusion, lat, named, pipe.scheduler, progress=False)
    assert r_named.per_sample[0] > 0 and np.all(r_named.per_sample[1:] == 0.0)


def test_infusion_eps_rejects_concept_of_other_model(pipe):
    bad = Concept(name="x", class_phrase="dog", deltas={"not.a.layer": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="does not fit this UNet"):
        InfusionEps.from_pipeline(copy.deepcopy(pipe), [bad])


# ----------------------------------------------------------------------------- scorers


def _images(n, seed=0, size=24):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).save_pretrained(path)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit")
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_clip_scores_match_hand_computation(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    scorer = CLIPScorer(tiny_clip, batch_size=2)  # batches of 2 over 3 images: exercises batching
    gen, refs = _images(3, 0), _images(2, 1)
    texts = scoring_texts(["a <mycat> in the snow", "a red <mycat>", "a dog"], {"mycat": "cat"})
    assert texts == ["a cat in the snow", "a red cat", "a dog"]
    got = scorer.score(gen, texts, refs)

    model, proc = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=proc(images=gen, return_tensors="pt")["pixel_values"]).pooler_output)
        ref = model.visual_projection(model.vision_model(pixel_values=proc(images=refs, return_tensors="pt")["pixel_values"]).pooler_output)
        enc = proc(text=texts, padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output)
    img, ref, txt = _unit(img.double()), _unit(ref.double()), _unit(txt.double())
    np.testing.assert_allclose(got["clip_t"], (img * txt).sum(-1).numpy(), rtol=1e-5, atol=1e-6)
    want_i = np.array([[float(img[i] @ ref[j]) for j in range(2)] for i in range(3)]).mean(1)
    np.testing.assert_allclose(got["clip_i"], want_i, rtol=1e-5, atol=1e-6)
    assert scorer.roles == {"text": "clip_t", "image": "clip_i"}
    with pytest.raises(ValueError, match="one text per image"):
        scorer.score(gen, texts[:2], refs)


def test_dino_scores_match_hand_computation(tiny_vit):
    from transformers import AutoImageProcessor, AutoModel

    scorer = DINOScorer(tiny_vit)
    gen, refs = _images(2, 2), _images(3, 3)
    got = scorer.score(gen, ["x", "y"], refs)["dino_i"]
    model, proc = AutoModel.from_pretrained(tiny_vit).eval(), AutoImageProcessor.from_pretrained(tiny_vit)
    with torch.no_grad():
        cls = lambda ims: _unit(model(pixel_values=proc(images=ims, return_tensors="pt")["pixel_values"]).last_hidden_state[:, 0].double())
        g, r = cls(gen), cls(refs)
    np.testing.assert_allclose(got, (g @ r.T).mean(1).numpy(), rtol=1e-5, atol=1e-6)
    # identical image as its only reference: cosine 1
    np.testing.assert_allclose(scorer.score(gen[:1], ["x"], gen[:1])["dino_i"], [1.0], rtol=1e-6)


def test_function_scorer_checks_shapes():
    s = FunctionScorer("probe", text_fn=lambda ims, txt: [1.0] * len(ims), image_fn=lambda ims, refs: [0.5])
    assert s.roles == {"text": "text_fidelity", "image": "concept_fidelity"}
    with pytest.raises(ValueError, match="concept_fidelity has shape"):
        s.score(_images(2), ["a", "b"], [])


def test_infusion_eps_follows_t_max_per_row(pipe):
    """A t_max concept injects only in rows with t < t_max * T (as InfusionPipeline samples it): above it C == F."""
    base = UNetEps.from_pipeline(pipe)
    custom_pipe = copy.deepcopy(pipe)
    c = _random_concept(custom_pipe.unet, scale=5.0)
    late = Concept(c.name, c.class_phrase, c.deltas, t_max=0.5)
    eps = InfusionEps.from_pipeline(custom_pipe, [late])
    z = _latents()[:2]
    t = torch.tensor([700, 200])  # T = 1000: row 0 above t_max * T, row 1 below
    prompts = ["a photo of a <mydog>"] * 2
    got, ref = eps(z, t, prompts), base(z, t, ["a photo of a dog"] * 2)
    assert torch.equal(got[0], ref[0])  # off: the base model bit for bit
    assert not torch.allclose(got[1], ref[1])  # on: the residual acts
    full = InfusionEps.from_pipeline(copy.deepcopy(pipe), [c])(z, t, prompts)
    # below t_max the same C row as without t_max (up to float order: the batch holds one C row less)
    assert torch.allclose(full[1], got[1], atol=1e-5) and not torch.allclose(full[0], got[0])
