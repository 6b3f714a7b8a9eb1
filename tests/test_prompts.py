import pytest

from infusion.core.placeholders import find_placeholders, parse_prompt, phrase_token_count


def _tokens_at(tokenizer, text, positions):
    ids = tokenizer(text).input_ids
    return [tokenizer.decode([ids[p]]).strip() for p in positions]


def test_single_token_class(tokenizer):
    pp = parse_prompt("a photo of <mycat> on the beach", {"mycat": "cat"}, tokenizer)
    assert pp.text == "a photo of cat on the beach"
    assert [s.name for s in pp.spans] == ["mycat"]
    assert pp.spans[0].positions == (4,)  # BOS a photo of cat
    assert _tokens_at(tokenizer, pp.text, pp.spans[0].positions) == ["cat"]


def test_multi_token_phrase_uses_real_bpe(tokenizer):
    pp = parse_prompt("<bear> in the snow", {"bear": "teddy bear"}, tokenizer)
    assert pp.text == "teddy bear in the snow"
    assert pp.spans[0].positions == (1, 2)
    assert _tokens_at(tokenizer, pp.text, pp.spans[0].positions) == ["teddy", "bear"]
    # a word the vocabulary splits into several BPE pieces
    n = phrase_token_count("backpackish", tokenizer)
    pp = parse_prompt("a <x>.", {"x": "backpackish"}, tokenizer)
    assert len(pp.spans[0].positions) == n > 1


def test_repeated_concept_and_two_of_one_class(tokenizer):
    pp = parse_prompt("<a> and <b> and <a>", {"a": "dog", "b": "dog"}, tokenizer)
    assert pp.text == "dog and dog and dog"
    assert [s.name for s in pp.spans] == ["a", "b", "a"]
    assert [s.positions for s in pp.spans] == [(1,), (3,), (5,)]


def test_punctuation_next_to_placeholder(tokenizer):
    pp = parse_prompt("look, <mycat>, sleeping", {"mycat": "cat"}, tokenizer)
    assert _tokens_at(tokenizer, pp.text, pp.spans[0].positions) == ["cat"]


def test_unknown_name_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"unknown concept <mydog>.*<mycat>"):
        parse_prompt("a <mydog> on grass", {"mycat": "cat"}, tokenizer)


def test_concept_cut_off_by_77_token_limit(tokenizer):
    with pytest.raises(ValueError, match="cut off by the 77-token limit"):
        parse_prompt("very " * 75 + "<mycat>", {"mycat": "cat"}, tokenizer)
    with pytest.raises(ValueError, match="cut off"):  # a two-token phrase straddling the limit
        parse_prompt("very " * 74 + "<bear>", {"bear": "teddy bear"}, tokenizer)
    # just inside the limit is fine: BOS + 74 words + cat = position 75, EOS at 76
    pp = parse_prompt("very " * 74 + "<mycat>", {"mycat": "cat"}, tokenizer)
    assert pp.spans[0].positions == (75,)


def test_prompt_without_placeholder_is_unchanged(tokenizer):
    pp = parse_prompt("a red ball <|endoftext|>", {"mycat": "cat"}, tokenizer)
    assert pp.text == "a red ball <|endoftext|>" and pp.spans == []
    assert find_placeholders("<a> <b-2> <c.d>") == ["a", "b-2", "c.d"]
