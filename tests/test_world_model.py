"""The committed world model loads with plain diffusers and makes images; checkpoints round-trip."""

import json

import pytest
import torch

from infusion.world import model_dir


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(model_dir()))
    p.set_progress_bar_config(disable=True)
    return p


def test_model_folder_is_diffusers_layout_and_small():
    d = model_dir()
    index = json.loads((d / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"world model is {size / 2**20:.1f} MiB"
    assert not list(d.rglob("*.bin")), "weights must be safetensors"


def test_loads_float32_with_the_real_clip_vocabulary(pipe):
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == len(pipe.tokenizer) == 49408
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"


def test_generates_what_the_prompt_names_deterministically(pipe):
    """Shape, and content: the scene probe reads the named background, class and colour (the np output is
    clamped to [0, 1] by the pipeline, so a range check would prove nothing)."""
    from infusion.world.fidelity import judge, parse_caption, read_scenes
    from infusion.world.probes import load_probes

    prompts = ["a red ball on the snow", "a photo of a house on the grass"]
    g = torch.Generator().manual_seed(0)
    out = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, generator=g, output_type="np").images
    assert out.shape == (2, 32, 32, 3)
    x = torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1
    for reading, prompt in zip(read_scenes(load_probes()[0].eval(), x), prompts):
        assert all(all(v) for v in judge(reading, parse_caption(prompt)).values()), (prompt, reading)
    g = torch.Generator().manual_seed(0)
    again = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, generator=g, output_type="np").images
    assert (out == again).all()


def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    from infusion.world.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", {"net": net}, opt, {"step": 7})
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    meta = load_checkpoint(tmp_path / "c.safetensors", {"net": net2}, opt2)
    assert meta["step"] == 7
    assert torch.equal(net.weight, net2.weight)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    with pytest.raises(ValueError, match="no weights for 'other'"):
        load_checkpoint(tmp_path / "c.safetensors", {"other": net2}, None)


def test_packaged_contextualizer_fits_the_world_text_encoder(pipe, tmp_path):
    """`--contextualizer world` is the packaged file; it was pretrained on this (frozen) text encoder and
    predicts masked words of held-out world captions far better than chance (ln 49408 = 10.8 nats)."""
    import warnings

    from infusion.core.customization_files import base_fingerprint
    from infusion.mlm import load_contextualizer, make_batch, mlm_loss
    from infusion.mlm.masking import tokenize_captions
    from infusion.mlm.pretrain import world_captions
    from infusion.training import TrainConfig
    from infusion.world import contextualizer_path

    cfg = TrainConfig(model="world", images=str(tmp_path), name="x", class_phrase="ball", out=str(tmp_path / "x.safetensors"),
                      method="ti", mlm_lambda=1e-5, contextualizer="world")
    assert cfg.contextualizer == str(contextualizer_path())
    fp = base_fingerprint(pipe.text_encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fingerprint mismatch would warn
        ctx, mask, meta = load_contextualizer(contextualizer_path(), pipe.text_encoder, fp)
    assert meta["text_encoder_fingerprint"] == fp
    held_out = world_captions(64, seed=10**6)  # pretraining used seeds 0..19,999
    batch = make_batch(tokenize_captions(held_out, pipe.tokenizer), pipe.tokenizer)
    with torch.no_grad():
        loss = mlm_loss(pipe.text_encoder, ctx, mask, batch, torch.Generator().manual_seed(0))
    assert loss.item() < 3.0, loss.item()


def test_shipped_scheduler_is_zero_terminal_snr_v_prediction(pipe):
    """The UNet was trained with v-prediction on betas rescaled to zero terminal SNR: sampling must use the same."""
    cfg = pipe.scheduler.config
    assert cfg.prediction_type == "v_prediction" and cfg.rescale_betas_zero_snr and cfg.timestep_spacing == "trailing"
    assert pipe.scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-6)  # t = 999 is pure noise


def test_objects_stand_where_the_prompt_says(pipe):
    """5 positions x 2 seeds, read by the scene probe: the named class stands in the named slot
    (the step-8,101 model, before the text encoder trained again, put ~1/3 of objects in place)."""
    from infusion.world import scenes
    from infusion.world.fidelity import read_scenes
    from infusion.world.probes import SLOTS, load_probes

    scene_probe, _ = load_probes()
    prompts = [f"a photo of a red ball on the grass, {scenes.POSITION_PHRASES[p][0]}" for p in scenes.POSITIONS]
    images = pipe(prompts * 2, num_inference_steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images * 2 - 1
    readings = read_scenes(scene_probe, images)
    placed = [r.cls[SLOTS.index(p)] == "ball" for r, p in zip(readings, list(scenes.POSITIONS) * 2)]
    assert sum(placed) >= 8, placed


def test_every_concept_pattern_survives_the_shipped_vae(pipe):
    """A pattern the latents cannot carry can never be generated, so no method could learn the concept.
    The object probe reads each concept's pattern on all 5 training images after encode -> decode
    (the first world's 2 px stripes and small dots came back as a blend of the two colours)."""
    import numpy as np

    from infusion.world import scenes
    from infusion.world.concepts import CONCEPTS, concept_images
    from infusion.world.dataset import to_model_range
    from infusion.world.probes import crop_object, load_probes

    _, object_probe = load_probes()
    for name, concept in CONCEPTS.items():
        x = to_model_range(torch.from_numpy(np.stack([np.array(im) for im in concept_images(name)])))
        with torch.no_grad():
            rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            read = object_probe(crop_object(rec, [scenes.object_box(concept.obj)] * len(x)))["pattern"].argmax(-1)
        assert [scenes.PATTERNS[i] for i in read] == [concept.obj.pattern] * len(x), name
