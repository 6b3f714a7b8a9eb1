"""Diverse-context MLM regulariser: prompt set, masking, the masked text encoder, L_MLM gradients."""

import copy

import pytest
import torch

from infusion.mlm import (
    CATEGORIES,
    Contextualizer,
    ContextualizerConfig,
    MLMRegularizer,
    encode_masked,
    everyday_prompt_set,
    make_batch,
    mlm_loss,
    sample_mask,
    tokenize_prompts,
    world_prompt_set,
)
from infusion.mlm.prompts import ContextPromptSet
from infusion.core.placeholders import parse_prompt

from conftest import tiny_text_encoder

WIDTH = 32


@pytest.fixture(scope="module")
def text_encoder(tokenizer):
    """A tiny random CLIP text encoder over the real vocabulary (frozen)."""
    return tiny_text_encoder(tokenizer, WIDTH).requires_grad_(False)


@pytest.fixture(scope="module")
def contextualizer(tokenizer):
    torch.manual_seed(1)
    return Contextualizer(ContextualizerConfig(WIDTH, vocab_size=len(tokenizer), n_layers=2, dropout=0.0))


@pytest.fixture(scope="module")
def prompts():
    return everyday_prompt_set().generate(64, seed=5)


# --- prompt set ----------------------------------------------------------------------------------


def test_everyday_set_has_20000_distinct_prompts_with_placeholder_deterministic():
    pset = everyday_prompt_set()
    assert len(pset) >= 20000
    a = pset.generate(20000, seed=0)
    assert len(set(a)) == 20000
    assert all(p.count("<concept>") == 1 for p in a)
    assert pset.generate(20000, seed=0) == a
    assert pset.generate(200, seed=1) != a[:200]
    assert pset.categories == list(CATEGORIES)


def test_prompt_categories_balanced():
    """Every category of the everyday set gets its even share of a draw (500 -> 100 each; 503 -> 101, 101, 101, 100,
    100), each prompt told to its category by enumerating every rendering of every category."""
    pset = everyday_prompt_set()
    category = {}
    for c in CATEGORIES:
        for i in range(pset.category_size(c)):
            category.setdefault(pset.render(c, i), c)
    assert len(category) == len(pset)  # no rendering in two categories: the count below is exact
    for n, shares in ((500, [100] * 5), (503, [101, 101, 101, 100, 100])):
        drawn = pset.generate(n, seed=2)
        counts = {c: sum(category[p] == c for p in drawn) for c in CATEGORIES}
        assert sorted(counts.values(), reverse=True) == shares, counts


def test_world_set_uses_given_word_lists_and_only_its_categories():
    pset = world_prompt_set(backgrounds=("on lava",), objects=("apple", "kettle"), colours=("teal",), sizes=("tiny",),
                            positions=("up top",), prefixes=("a photo of",))
    prompts = pset.generate(len(pset), seed=0)
    assert len(prompts) == len(pset) == len(set(prompts))
    assert pset.categories == ["backgrounds", "relations"]
    assert all("on lava" in p for p in prompts)
    assert "a photo of a <concept> and a tiny teal apple on lava" in prompts
    assert len(world_prompt_set()) > 1000  # the world's own word lists
    orange = world_prompt_set(colours=("orange",)).generate(50, seed=0)
    assert any("an orange" in p for p in orange) and not any("a orange" in p for p in orange)
    with pytest.raises(ValueError, match="cannot draw"):
        pset.generate(len(pset) + 1)


@pytest.mark.parametrize(
    "templates, words, match",
    [
        ({"styles": ["a {style} of a cat"]}, {"style": ["sketch"]}, "exactly once"),
        ({"styles": ["a {style} of a {c}"]}, {"style": ["sketch", "sketch"]}, "repeats"),
        ({"styles": ["a {style} of a {c}"]}, {"style": ["a {b}"]}, "bad entry"),
        ({"outfit": ["a {c}"]}, {}, "unknown prompt categories"),
        ({"styles": ["a {style} of a {c}"]}, {}, "no template"),
    ],
)
def test_prompt_set_rejects_bad_templates_and_words(templates, words, match):
    with pytest.raises(ValueError, match=match):
        ContextPromptSet(templates, words)


def test_every_prompt_locates_its_concept(tokenizer):
    for p in everyday_prompt_set().generate(100, seed=3):
        spans = parse_prompt(p, {"concept": "sks dog"}, tokenizer).spans
        assert len(spans) == 1 and len(spans[0].positions) == 2


# --- masking ---------------------------------------------------------------------------------------


def test_mask_never_touches_concept_class_or_special_tokens(tokenizer, prompts):
    batch = tokenize_prompts(prompts, {"concept": "sks dog"}, tokenizer)
    L = batch.input_ids.shape[1]
    forbidden = torch.zeros_like(batch.maskable)
    for i, p in enumerate(prompts):  # concept + class positions, found independently
        forbidden[i, list(parse_prompt(p, {"concept": "sks dog"}, tokenizer).spans[0].positions)] = True
    n_real = batch.attention_mask.sum(1)
    forbidden[:, 0] = True  # BOS
    forbidden |= torch.arange(L)[None, :] >= (n_real - 1)[:, None]  # EOS and padding
    for seed in range(300):
        mask = sample_mask(batch.maskable, 0.15, torch.Generator().manual_seed(seed))
        assert not (mask & forbidden).any()
        assert mask.sum(1).min() >= 1


def test_mask_rate_exact_per_row_and_deterministic(tokenizer, prompts):
    batch = tokenize_prompts(prompts, {"concept": "<mycat>"}, tokenizer)
    n = batch.maskable.sum(1)
    mask = sample_mask(batch.maskable, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(mask.sum(1), torch.clamp(torch.round(0.15 * n.float()).long(), min=1))
    big = sample_mask(batch.maskable.repeat(8, 1), 0.3, torch.Generator().manual_seed(1))
    assert abs(big.sum().item() / batch.maskable.repeat(8, 1).sum().item() - 0.3) < 0.03
    assert torch.equal(mask, sample_mask(batch.maskable, 0.15, torch.Generator().manual_seed(0)))
    assert not torch.equal(mask, sample_mask(batch.maskable, 0.15, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="mask rate"):
        sample_mask(batch.maskable, 0.0)


def test_masked_encoding_replaces_only_masked_inputs(text_encoder, tokenizer, prompts):
    batch = tokenize_prompts(prompts[:4], {"concept": "cat"}, tokenizer)
    mask = torch.zeros_like(batch.maskable)
    mask[:, 3] = True
    plain = text_encoder(input_ids=batch.input_ids).last_hidden_state
    module = text_encoder.get_input_embeddings()
    same = encode_masked(text_encoder, batch.input_ids, mask, module.weight[batch.input_ids[0, 3]])
    assert torch.equal(same[0], plain[0])  # [MASK] equal to the original embedding: nothing changes
    masked = encode_masked(text_encoder, batch.input_ids, mask, torch.randn(WIDTH))
    assert torch.equal(masked[:, :3], plain[:, :3])  # CLIP is causal: positions before the mask are untouched
    assert not torch.allclose(masked[:, 3:], plain[:, 3:])
    assert len(module._forward_hooks) == 0
    with pytest.raises(ValueError, match="embed_fn returned"):
        encode_masked(text_encoder, batch.input_ids, mask, torch.zeros(WIDTH), embed_fn=lambda ids: torch.zeros(1, 2, WIDTH))
    assert len(module._forward_hooks) == 0


# --- the loss and its gradients ----------------------------------------------------------------


def _regularizer(contextualizer, tokenizer, concept_text, prompts, **kw):
    mask = torch.randn(WIDTH, generator=torch.Generator().manual_seed(0))
    return MLMRegularizer(contextualizer, mask, tokenizer, concept_text, prompts, batch_size=4, **kw)


def test_gradient_reaches_an_embed_fn_vector_not_the_contextualizer(text_encoder, contextualizer, tokenizer, prompts):
    """P+-style: the concept's input embedding comes from a learnable vector via embed_fn."""
    concept_id = tokenizer("sks", add_special_tokens=False)["input_ids"][0]
    v = torch.nn.Parameter(torch.randn(WIDTH))
    table = text_encoder.get_input_embeddings()

    def embed_fn(ids):  # (B, L) -> (B, L, H)
        return torch.where((ids == concept_id)[..., None], v, table(ids))

    reg = _regularizer(contextualizer, tokenizer, "sks dog", prompts, weight=0.5)
    loss = reg(text_encoder, embed_fn)
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reg.contextualizer.parameters())
    assert reg.mask_embedding.grad is None and not reg.mask_embedding.requires_grad
    assert loss.item() == pytest.approx(0.5 * reg.last_loss, rel=1e-6)


def test_gradient_reaches_an_added_ti_token_row(text_encoder, contextualizer, tokenizer, prompts):
    """TI-style: a new token appended to the vocabulary, learnt through its embedding row."""
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["<mycat>"])
    te = copy.deepcopy(text_encoder)
    te.resize_token_embeddings(len(tok))
    weight = te.get_input_embeddings().weight
    weight.requires_grad_(True)
    reg = _regularizer(contextualizer, tok, "<mycat>", prompts)
    reg(te).backward()
    new_id = len(tok) - 1
    assert weight.grad[new_id].abs().sum() > 0  # the concept row is reached through the encoder
    assert all(p.grad is None for p in reg.contextualizer.parameters())
    # an unprotected added token would be a target outside the contextualizer's vocabulary
    batch = make_batch([tok("a <mycat> <mycat> <mycat>")["input_ids"]], tok)
    with pytest.raises(ValueError, match="outside the contextualizer"):
        mlm_loss(te, reg.contextualizer, reg.mask_embedding, batch, mask_rate=1.0)


def test_regularizer_is_deterministic_and_rejects_frozen_text_side(text_encoder, contextualizer, tokenizer, prompts):
    a = _regularizer(contextualizer, tokenizer, "dog", prompts, seed=3)
    b = _regularizer(contextualizer, tokenizer, "dog", prompts, seed=3)
    with torch.no_grad():
        assert [a(text_encoder).item() for _ in range(3)] == [b(text_encoder).item() for _ in range(3)]
    with pytest.raises(ValueError, match="no gradient path"):
        a(text_encoder)  # every text-side parameter is frozen: the regulariser would do nothing


def test_loss_errors_on_bad_input(text_encoder, contextualizer, tokenizer, prompts):
    batch = tokenize_prompts(["<concept>"], {"concept": "dog"}, tokenizer)
    with pytest.raises(ValueError, match="no token can be masked"):
        mlm_loss(text_encoder, contextualizer, torch.zeros(WIDTH), batch)
    with pytest.raises(ValueError, match="lacks the concept placeholder"):
        _regularizer(contextualizer, tokenizer, "dog", ["a photo of a dog"])
    reg = _regularizer(contextualizer, tokenizer, "dog", ["a <dog> and a <cat>"], placeholder="<dog>")
    with pytest.raises(ValueError, match="unknown concept <cat>"):
        reg(text_encoder)
