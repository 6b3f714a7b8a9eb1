"""Contextualizer pretraining, its safetensors file, resuming, and the ``infusion mlm`` CLI."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from infusion.cli import main
from infusion.core.customization_files import base_fingerprint
from infusion.mlm import ContextualizerConfig, PretrainConfig, load_contextualizer, make_batch, mlm_loss, pretrain_contextualizer
from infusion.mlm.masking import tokenize_captions
from infusion.mlm.pretrain import checkpoint_path
from infusion.mlm.prompts import world_prompt_set

from conftest import tiny_text_encoder

WIDTH = 32


@pytest.fixture(scope="module")
def text_encoder(tokenizer):
    return tiny_text_encoder(tokenizer, WIDTH)


@pytest.fixture(scope="module")
def captions():
    return [p.replace("<concept>", "cat") for p in world_prompt_set().generate(400, seed=0)]


def _small(**kw):
    base = dict(steps=4, batch_size=8, lr=3e-3, warmup=2, checkpoint_every=0, seed=1)
    base.update(kw)
    return PretrainConfig(**base)


def _model_config(tokenizer):
    return ContextualizerConfig(WIDTH, vocab_size=len(tokenizer), n_layers=2, dropout=0.1)


def _eval_loss(text_encoder, model, mask, tokenizer, captions):
    batch = make_batch(tokenize_captions(captions[-32:], tokenizer), tokenizer)
    model.eval()
    with torch.no_grad():
        return mlm_loss(text_encoder, model, mask, batch, torch.Generator().manual_seed(123)).item()


def test_pretraining_reduces_heldout_loss_and_leaves_text_encoder_alone(text_encoder, tokenizer, captions, tmp_path):
    before_state = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    flags = [p.requires_grad for p in text_encoder.parameters()]
    torch.manual_seed(1)
    from infusion.mlm import Contextualizer
    from infusion.mlm.contextualizer import new_mask_embedding

    init = Contextualizer(_model_config(tokenizer))
    start = _eval_loss(text_encoder, init, new_mask_embedding(text_encoder), tokenizer, captions[:-32] + captions[-32:])
    model, mask, losses = pretrain_contextualizer(
        text_encoder, tokenizer, captions[:-32], tmp_path / "ctx.safetensors", _small(steps=30), _model_config(tokenizer), progress=False
    )
    end = _eval_loss(text_encoder, model, mask, tokenizer, captions)
    assert len(losses) == 30
    print(f'held-out MLM loss {start:.3f} -> {end:.3f}')
    assert end < start - 3.0, (start, end)  # nats; ln(49408) = 10.8
    assert all(torch.equal(v, text_encoder.state_dict()[k]) for k, v in before_state.items())
    assert [p.requires_grad for p in text_encoder.parameters()] == flags


def test_file_round_trip_and_checks(text_encoder, tokenizer, captions, tmp_path):
    out = tmp_path / "ctx.safetensors"
    model, mask, _ = pretrain_contextualizer(
        text_encoder, tokenizer, captions, out, _small(steps=2), _model_config(tokenizer), progress=False
    )
    fp = base_fingerprint(text_encoder)
    loaded, loaded_mask, meta = load_contextualizer(out, text_encoder, fp)
    assert torch.equal(loaded_mask, mask)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert meta["text_encoder_fingerprint"] == fp and meta["text_hidden_size"] == str(WIDTH)
    assert json.loads(meta["pretrain"])["steps"] == 2 and "final_loss" in meta
    with safe_open(str(out), framework="pt") as f:
        assert not any(k.startswith("optim.") for k in f.keys())  # the optimizer state stays in the checkpoint
    states = torch.randn(2, 5, WIDTH)
    model.eval()
    assert torch.equal(loaded(states), model(states))
    with pytest.warns(UserWarning, match="pretrained on text encoder"):
        load_contextualizer(out, text_encoder, "0" * 16)

    from transformers import CLIPTextConfig, CLIPTextModel

    wide = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=48,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
    with pytest.raises(ValueError, match="width 32, this one has width 48"):
        load_contextualizer(out, wide)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other), metadata={"format": "infusion-concept"})
    with pytest.raises(ValueError, match="not a contextualizer file"):
        load_contextualizer(other)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_contextualizer(tmp_path / "junk.safetensors")


def test_resume_matches_an_uninterrupted_run(text_encoder, tokenizer, captions, tmp_path):
    straight, mask_a, losses_a = pretrain_contextualizer(
        text_encoder, tokenizer, captions, tmp_path / "a.safetensors", _small(steps=4), _model_config(tokenizer), progress=False
    )
    pretrain_contextualizer(
        text_encoder, tokenizer, captions, tmp_path / "b.safetensors", _small(steps=2), _model_config(tokenizer), progress=False
    )
    assert checkpoint_path(tmp_path / "b.safetensors").is_file()
    resumed, mask_b, losses_b = pretrain_contextualizer(
        text_encoder, tokenizer, captions, tmp_path / "b.safetensors", _small(steps=4), _model_config(tokenizer),
        resume=True, progress=False,
    )
    assert losses_b == losses_a[2:]
    assert torch.equal(mask_a, mask_b)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())
    with pytest.raises(ValueError, match="another shape"):
        pretrain_contextualizer(
            text_encoder, tokenizer, captions, tmp_path / "b.safetensors", _small(steps=8),
            ContextualizerConfig(WIDTH, vocab_size=len(tokenizer), n_layers=1), resume=True, progress=False,
        )


def test_cli_prompts_and_pretrain(text_encoder, tmp_path, capsys):
    assert main(["mlm", "prompts", "--n", "7", "--seed", "4"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 7 == len(set(first)) and all("<concept>" in p for p in first)
    assert main(["mlm", "prompts", "--n", "7", "--seed", "4", "--vocab", "world", "--fill", "dog"]) == 0
    world = capsys.readouterr().out.splitlines()
    assert len(world) == 7 and all(" dog " in p and "<concept>" not in p for p in world)

    assert main(["mlm", "captions", "--n", "3", "--seed", "2"]) == 0
    corpus = capsys.readouterr().out.splitlines()
    assert len(corpus) == 3 and all(corpus)

    model = tmp_path / "model"
    text_encoder.save_pretrained(str(model / "text_encoder"))  # no tokenizer/: the packaged one is used
    caps = tmp_path / "captions.txt"
    caps.write_text("\n".join(world * 3) + "\n\n", encoding="utf-8")
    out = tmp_path / "ctx.safetensors"
    argv = ["mlm", "pretrain", "--model", str(model), "--captions", str(caps), "--out", str(out),
            "--steps", "2", "--batch-size", "4", "--layers", "1", "--heads", "2"]
    assert main(argv) == 0
    _, mask, meta = load_contextualizer(out, text_encoder, base_fingerprint(text_encoder))
    assert mask.shape == (WIDTH,) and json.loads(meta["config"])["n_layers"] == 1

    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    assert main(argv[:5] + [str(empty)] + argv[6:]) == 2
    assert "holds no captions" in capsys.readouterr().err
    assert main(["mlm", "pretrain", "--model", str(tmp_path), "--captions", str(caps), "--out", str(out)]) == 2
    assert "text_encoder/ subfolder" in capsys.readouterr().err

    # --captions world: the world's corpus; --save-dtype float16: half the file, loads back as float32
    half = tmp_path / "half.safetensors"
    assert main(argv[:5] + ["world", "--out", str(half), "--save-dtype", "float16"] + argv[8:]) == 0
    with safe_open(str(half), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        assert json.loads(f.metadata()["pretrain"])["save_dtype"] == "float16" and f.metadata()["n_captions"] == "20000"
    model16, mask16, _ = load_contextualizer(half, text_encoder)
    assert mask16.dtype == torch.float32 and all(v.dtype == torch.float32 for v in model16.state_dict().values())
    assert half.stat().st_size < 0.6 * out.stat().st_size
    with pytest.raises(ValueError, match="save_dtype must be float32 or float16"):
        PretrainConfig(save_dtype="bfloat16")


def test_authors_objective_counts_every_real_token_with_masked_ones_weighted(text_encoder, tokenizer, captions):
    """objective non_padding (the MLM paper's mlm/train_mlm.sh: --mlm_target non_padding --mlm_weight 5): CE at every
    real token (BOS, words, EOS; never padding), masked tokens x5, divided by the number of real tokens."""
    import torch.nn.functional as F

    from infusion.mlm import Contextualizer
    from infusion.mlm.masking import encode_masked, sample_mask

    torch.manual_seed(0)
    model = Contextualizer(ContextualizerConfig(WIDTH, vocab_size=len(tokenizer), n_layers=2, dropout=0.0)).eval()
    mask_emb = torch.randn(WIDTH)
    batch = make_batch(tokenize_captions(captions[:6], tokenizer), tokenizer)
    assert (batch.attention_mask == 0).any()  # rows of different lengths: padding exists and must not count
    with torch.no_grad():
        got = mlm_loss(text_encoder, model, mask_emb, batch, torch.Generator().manual_seed(5), 0.25,
                       target="non_padding", masked_weight=5.0)
        mask = sample_mask(batch.maskable, 0.25, torch.Generator().manual_seed(5))
        states = encode_masked(text_encoder, batch.input_ids, mask, mask_emb)
        logits = model(states, batch.attention_mask)  # (B, L, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch.input_ids.flatten(), reduction="none").view(mask.shape)
        w = torch.where(mask, 5.0, 1.0) * batch.attention_mask
        want = (ce * w).sum() / batch.attention_mask.sum()
        masked_only = mlm_loss(text_encoder, model, mask_emb, batch, torch.Generator().manual_seed(5), 0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked_only, ce[mask].mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="objective must be masked or non_padding"):
        PretrainConfig(objective="all")
