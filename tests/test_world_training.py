"""The world model's training stages run, checkpoint, resume and export (tiny settings)."""

import json

import torch

from infusion.world.checkpoint import load_checkpoint


def test_vae_then_model_stage_resume_and_export(tmp_path, optimizer_steps, caplog):
    from diffusers import StableDiffusionPipeline

    from infusion.world.architecture import build_vae
    from infusion.world.train_model import ModelConfig, train_model
    from infusion.world.train_vae import VAEConfig, finish_vae, train_vae

    work = tmp_path / "work"
    vcfg = VAEConfig(work=str(work), checkpoint=str(tmp_path / "vae.safetensors"), n_images=24, steps=2, batch_size=4)
    train_vae(vcfg)
    vcfg.steps = 3
    del optimizer_steps[:]
    train_vae(vcfg)  # resumes at step 2
    assert len(optimizer_steps) == 1  # one step, not three: the state was used
    vae = build_vae()
    assert load_checkpoint(vcfg.checkpoint, {"vae": vae}, None)["step"] == 3
    finish_vae(vcfg)
    assert (work / "vae" / "config.json").exists() and (work / "latents.safetensors").exists()

    mcfg = ModelConfig(work=str(work), checkpoint=str(tmp_path / "train.safetensors"), export_dir=str(tmp_path / "model"),
                       steps=2, batch_size=4, export_every=2, samples=False, text_encoder_trains=((0, 2),))
    train_model(mcfg)
    first = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"))
    mcfg.steps = 3
    del optimizer_steps[:]
    train_model(mcfg)
    assert len(optimizer_steps) == 1
    assert json.loads((tmp_path / "model" / "training_state.json").read_text())["step"] == 3
    second = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"))
    del optimizer_steps[:]
    with caplog.at_level("WARNING", logger="infusion"):
        train_model(mcfg)  # already at steps: says so, trains and exports nothing
    assert optimizer_steps == [] and "is at step 3, not before steps=3: nothing to train" in caplog.text
    w1, w2 = first.unet.conv_out.weight, second.unet.conv_out.weight
    assert w1.dtype == torch.float32 and not torch.equal(w1, w2)  # training went on from the checkpoint
    # from step 2 on the text encoder is frozen at its EMA: the export keeps it bit for bit
    for (k, a), b in zip(first.text_encoder.state_dict().items(), second.text_encoder.state_dict().values()):
        assert torch.equal(a, b), k
    assert second.vae.config.scaling_factor == first.vae.config.scaling_factor != 1.0
    # the patterned set: rendered and encoded once, a share of each batch
    mcfg.steps, mcfg.patterned_images, mcfg.patterned_share = 4, 6, 0.5
    del optimizer_steps[:]
    train_model(mcfg)
    assert len(optimizer_steps) == 1
    from safetensors.torch import load_file

    assert load_file(str(work / "latents_patterned.safetensors"))["mean"].shape == (6, 4, 8, 8)
    # the candidate worlds' caption options run through the same loop (the token loss's recorders take the mask)
    mcfg.steps, mcfg.name_patterns, mcfg.summary_dropout, mcfg.hide_look_words = 5, 1.0, 1.0, 1.0
    del optimizer_steps[:]
    train_model(mcfg)
    assert len(optimizer_steps) == 1
    mcfg.steps, mcfg.summary_dropout, mcfg.hide_look_words, mcfg.look_only_in_class_words = 7, 0.5, 0.5, True
    del optimizer_steps[:]
    train_model(mcfg)
    assert len(optimizer_steps) == 2
    mcfg.steps, mcfg.look_in_class_values = 8, 1.0  # the class words' keys from the look-free captions
    del optimizer_steps[:]
    train_model(mcfg)
    assert len(optimizer_steps) == 1


def test_the_patterned_set_names_every_look():
    import random

    from infusion.world import scenes
    from infusion.world.dataset import patterned_scene
    from infusion.world.train_model import _captions

    texts, sc = _captions(torch.arange(40), random.Random(0), 0.0, patterned=True)
    assert sc[3] == patterned_scene(3) and all(o.pattern != "plain" for s in sc for o in s.objects)
    for text, scene in zip(texts, sc):
        for o in scene.objects:
            assert f"{o.color} and {o.color2} {scenes.PATTERN_WORDS[o.pattern]} {o.cls}" in text, text


def test_decoder_finetune_changes_only_the_decoder_and_resumes(tmp_path, optimizer_steps):
    """The UNet models the encoder's latents: a decoder fine-tune must leave the encoder bit-identical."""
    from diffusers import AutoencoderKL

    from infusion.world.architecture import build_vae
    from infusion.world.train_vae import DecoderConfig, finetune_decoder

    torch.manual_seed(0)
    build_vae().save_pretrained(tmp_path / "vae0")
    cfg = DecoderConfig(work=str(tmp_path / "work"), vae=str(tmp_path / "vae0"), checkpoint=str(tmp_path / "dec.safetensors"),
                        out=str(tmp_path / "vae1"), n_images=24, steps=2, batch_size=4)
    finetune_decoder(cfg)
    cfg.steps = 3
    del optimizer_steps[:]
    finetune_decoder(cfg)  # resumes at step 2
    assert len(optimizer_steps) == 1
    before, after = AutoencoderKL.from_pretrained(tmp_path / "vae0"), AutoencoderKL.from_pretrained(tmp_path / "vae1")
    changed = {k for (k, a), b in zip(before.state_dict().items(), after.state_dict().values()) if not torch.equal(a, b)}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), sorted(changed)[:5]
    assert load_checkpoint(cfg.checkpoint, {"decoder": before.decoder, "post_quant_conv": before.post_quant_conv}, None)["step"] == 3


def test_bad_patterned_settings_are_refused_before_any_work(tmp_path):
    import pytest

    from infusion.world.train_model import ModelConfig, train_model

    for bad in ({"patterned_share": 1.0}, {"name_patterns": 1.5}, {"patterned_images": -1}):
        with pytest.raises(ValueError, match="patterned_share must be in"):
            train_model(ModelConfig(work=str(tmp_path / "w"), **bad))
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="summary_dropout must be in"):
        train_model(ModelConfig(work=str(tmp_path / "w"), summary_dropout=1.5))
    with pytest.raises(ValueError, match="hide_look_words must be in"):
        train_model(ModelConfig(work=str(tmp_path / "w"), hide_look_words=-0.1))
    with pytest.raises(ValueError, match="set hide_look_words > 0"):
        train_model(ModelConfig(work=str(tmp_path / "w"), look_only_in_class_words=True))
    with pytest.raises(ValueError, match="look_in_class_values must be in"):
        train_model(ModelConfig(work=str(tmp_path / "w"), look_in_class_values=2.0))
    with pytest.raises(ValueError, match="--look-only-in-class-words, or --look-in-class-values 0"):
        train_model(ModelConfig(work=str(tmp_path / "w"), look_in_class_values=0.5, hide_look_words=0.9))
    assert not (tmp_path / "w").exists()


def test_summary_dropout_replaces_eos_and_padding_of_the_chosen_rows_only():
    from infusion.core.model_configs import load_tokenizer
    from infusion.world.train_model import drop_summary

    tok = load_tokenizer()
    ids = tok(["a photo of a red ball", "a dipped ball on the snow"], padding="max_length", max_length=77,
              return_tensors="pt").input_ids
    cond, empty = torch.randn(2, 77, 8), torch.randn(77, 8)
    out = drop_summary(cond, ids, empty, torch.tensor([True, False]))
    eos = ids[0].tolist().index(tok.eos_token_id)
    assert eos == 7  # BOS + 6 words
    assert torch.equal(out[0, :eos], cond[0, :eos])  # the words keep their states
    assert torch.equal(out[0, eos:], empty[eos:])  # EOS and padding: the empty caption's
    assert torch.equal(out[1], cond[1])  # a row not chosen is untouched
    assert torch.equal(drop_summary(cond, ids, empty, torch.tensor([False, False])), cond)


def test_hidden_look_words_get_exactly_zero_attention():
    """``look_word_mask`` hides colours, "and" and pattern words of the chosen rows only; with it the UNet's output
    does not depend on the hidden positions' states at all (bit for bit), with stock and recording processors."""
    from infusion.core.model_configs import load_tokenizer
    from infusion.world.architecture import build_unet
    from infusion.world.token_loss import install_recorders
    from infusion.world.train_model import look_word_ids, look_word_mask

    tok = load_tokenizer()
    ids = tok(["a photo of a large yellow and blue dipped ball on the snow", "a red box"], padding="max_length",
              max_length=77, return_tensors="pt").input_ids
    look = look_word_ids(tok)
    mask = look_word_mask(ids, look, torch.tensor([True, False]))
    assert mask.shape == (2, 77)
    assert mask[0].tolist()[:13] == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]  # BOS a photo of a large | yellow and blue dipped | ball on the
    assert mask[1].eq(1).all()  # a row not chosen keeps its colour word
    assert look_word_mask(ids, look, torch.tensor([True, True]))[1, 2] == 0  # "red", when chosen

    torch.manual_seed(0)
    unet = build_unet().eval()
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    cond = torch.randn(2, 77, unet.config.cross_attention_dim)
    other = cond.clone()
    other[mask == 0] = 5 * torch.randn(int((mask == 0).sum()), cond.shape[-1])
    for processors in ("stock", "recording"):
        if processors == "recording":
            install_recorders(unet)
        with torch.no_grad():
            a = unet(z, t, cond, encoder_attention_mask=mask).sample
            b = unet(z, t, other, encoder_attention_mask=mask).sample
            c = unet(z, t, other).sample
        assert torch.equal(a, b), processors
        assert not torch.allclose(a, c), processors  # unmasked, the same states do change the output


def test_look_only_in_class_words_swaps_every_other_position_for_the_look_free_captions():
    from infusion.core.model_configs import load_tokenizer
    from infusion.world.train_model import look_only_in_class_words, look_word_ids, without_look_words

    tok = load_tokenizer()
    look = look_word_ids(tok)
    texts = ["a photo of an orange and blue dipped ball and a red box on the snow", "a green tree"]
    free = [without_look_words(t) for t in texts]
    assert free == ["a photo of an ball a box on the snow", "a tree"]  # the joining "and" goes too: it is a look word
    enc = lambda ts: tok(ts, padding="max_length", max_length=77, return_tensors="pt").input_ids  # noqa: E731
    ids, free_ids = enc(texts), enc(free)
    cond, free_cond = torch.randn(2, 77, 8), torch.randn(2, 77, 8)
    classes = torch.tensor([tok.convert_tokens_to_ids(w + "</w>") for w in ("ball", "box", "tree")])
    out = look_only_in_class_words(cond, ids, free_cond, free_ids, look, classes, torch.tensor([True, False]))
    words = tok.convert_ids_to_tokens(ids[0].tolist())
    ball, box, orange, snow = words.index("ball</w>"), words.index("box</w>"), words.index("orange</w>"), words.index("snow</w>")
    assert torch.equal(out[0, ball], cond[0, ball]) and torch.equal(out[0, box], cond[0, box])  # class words keep theirs
    assert torch.equal(out[0, orange], cond[0, orange])  # a look word keeps its state (the mask hides it)
    free_words = tok.convert_ids_to_tokens(free_ids[0].tolist())
    assert torch.equal(out[0, snow], free_cond[0, free_words.index("snow</w>")])  # shifted to its counterpart
    assert torch.equal(out[0, 0], free_cond[0, 0]) and torch.equal(out[0, -1], free_cond[0, 77 - 6 - 1])  # BOS; padding (6 look words)
    assert torch.equal(out[1], cond[1])  # a row not chosen is untouched


def test_class_keys_from_look_free_swaps_the_class_words_of_the_chosen_rows_only():
    from infusion.core.model_configs import load_tokenizer
    from infusion.world.train_model import class_keys_from_look_free, look_word_ids, without_look_words

    tok = load_tokenizer()
    look = look_word_ids(tok)
    texts = ["a photo of an orange and blue dipped ball and a red box on the snow", "a green tree"]
    enc = lambda ts: tok(ts, padding="max_length", max_length=77, return_tensors="pt").input_ids  # noqa: E731
    ids, free_ids = enc(texts), enc([without_look_words(t) for t in texts])
    cond, free_cond = torch.randn(2, 77, 8), torch.randn(2, 77, 8)
    classes = torch.tensor([tok.convert_tokens_to_ids(w + "</w>") for w in ("ball", "box", "tree")])
    keys = class_keys_from_look_free(cond, ids, free_cond, free_ids, look, classes, torch.tensor([True, False]))
    words, free_words = (tok.convert_ids_to_tokens(i[0].tolist()) for i in (ids, free_ids))
    for w in ("ball</w>", "box</w>"):  # each class word takes its look-free counterpart's state
        assert torch.equal(keys[0, words.index(w)], free_cond[0, free_words.index(w)])
    changed = (keys[0] != cond[0]).any(dim=-1).nonzero().flatten().tolist()
    assert changed == sorted([words.index("ball</w>"), words.index("box</w>")])  # and nothing else changes
    assert torch.equal(keys[1], cond[1])  # a row not chosen (its tree keeps its state)


def test_recorder_takes_keys_from_key_context_and_values_from_the_text():
    """With ``key_context`` the recording processor's maps are softmax(q K(key_context)) and its output mixes the text
    states' values with them; without it, it is the stock processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from infusion.world.architecture import build_unet
    from infusion.world.token_loss import install_recorders

    torch.manual_seed(0)
    unet = build_unet().eval()
    name = next(n for n in unet.attn_processors if n.endswith("attn2.processor"))
    attn = unet.get_submodule(name.rsplit(".processor", 1)[0])
    rec = install_recorders(unet)[name]
    hs, text = torch.randn(2, 16, attn.to_q.in_features), torch.randn(2, 77, attn.to_k.in_features)
    with torch.no_grad():
        stock = AttnProcessor2_0()(attn, hs, text)
        assert torch.allclose(rec(attn, hs, text), stock, atol=1e-5)  # no key_context: stock attention
        keys = text.clone()
        keys[:, 5] = 3 * torch.randn(2, text.shape[-1])
        rec.key_context = keys
        out = rec(attn, hs, text)
        split = lambda x: x.view(2, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.to_q(hs)), split(attn.to_k(keys)), split(attn.to_v(text))
        maps = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)  # (2, H, 16, 77)
        want = attn.to_out[0]((maps @ v).transpose(1, 2).reshape(2, 16, -1))
        assert torch.allclose(rec.maps, maps, atol=1e-6)
        assert torch.allclose(out, want, atol=1e-5)
        assert not torch.allclose(out, stock, atol=1e-3)  # the keys did change the output


def test_the_scheduler_world_training_builds_is_the_shipped_one():
    """A retrained world exports the scheduler the committed model has (steps_offset included: diffusers' pipeline
    warns on 0)."""
    import json
    from pathlib import Path

    import infusion.world
    from infusion.world.architecture import build_scheduler

    shipped = json.loads((Path(infusion.world.__file__).parent / "model" / "scheduler" / "scheduler_config.json").read_text())
    built = {k: v for k, v in build_scheduler().config.items() if not k.startswith("_")}
    assert built == {k: v for k, v in shipped.items() if not k.startswith("_")}
