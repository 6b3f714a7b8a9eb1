"""Concept placeholders in prompts (DESIGN section 2).

A prompt writes ``<mycat>``; we substitute the concept's class phrase ("cat", "teddy bear") and
record which token positions that substitution occupies, using the tokenizer's own character
offsets (never splitting on spaces: a phrase can be several BPE tokens, and a word can merge
with punctuation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_\-\.]*"  # a concept name: what may stand between < and >
PLACEHOLDER = re.compile(f"<({NAME_PATTERN})>")


@dataclass(frozen=True)
class ConceptSpan:
    """One occurrence of a concept in a prompt: its name and its token positions (with BOS at 0)."""

    name: str
    positions: tuple[int, ...]


@dataclass
class ParsedPrompt:
    """A prompt after substitution.

    text:  the prompt the text encoder sees (class phrases in place of placeholders)
    spans: every concept occurrence, in prompt order
    """

    source: str
    text: str
    spans: list[ConceptSpan] = field(default_factory=list)

    @property
    def concept_names(self) -> list[str]:
        return [s.name for s in self.spans]


def find_placeholders(prompt: str) -> list[str]:
    """Names written as ``<name>`` in ``prompt``, in order (repeats kept)."""
    return PLACEHOLDER.findall(prompt)


def substitute(prompt: str, class_phrases: Mapping[str, str]) -> tuple[str, list[tuple[str, int, int]]]:
    """Replace placeholders by class phrases.

    Returns the new text and, per placeholder, ``(name, char_start, char_end)`` in the new text.
    Raises ``ValueError`` naming an unknown concept and the known ones.
    """
    out, spans, last = [], [], 0
    length = 0
    for m in PLACEHOLDER.finditer(prompt):
        name = m.group(1)
        if name not in class_phrases:
            known = ", ".join(f"<{n}>" for n in sorted(class_phrases)) or "none"
            raise ValueError(
                f"Prompt {prompt!r} refers to unknown concept <{name}>; loaded concepts: {known}. "
                "Load the concept file (--concept FILE / concepts=[...]) or fix the name."
            )
        before = prompt[last : m.start()]
        out.append(before)
        length += len(before)
        phrase = class_phrases[name]
        spans.append((name, length, length + len(phrase)))
        out.append(phrase)
        length += len(phrase)
        last = m.end()
    out.append(prompt[last:])
    return "".join(out), spans


def parse_prompt(prompt: str, class_phrases: Mapping[str, str], tokenizer) -> ParsedPrompt:
    """Substitute placeholders and locate each concept's tokens with ``tokenizer``.

    Token positions index the padded sequence the text encoder sees (position 0 is BOS).
    Raises ``ValueError`` when a concept falls (partly) beyond ``tokenizer.model_max_length``.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    text, char_spans = substitute(prompt, class_phrases)
    if not char_spans:
        return ParsedPrompt(prompt, text, [])
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True, truncation=False)
    offsets = enc["offset_mapping"]
    max_len = tokenizer.model_max_length  # 77 for CLIP: BOS + 75 tokens + EOS
    spans = []
    for name, start, end in char_spans:
        pos = tuple(
            i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start and i not in (0, len(offsets) - 1)
        )
        if not pos:
            raise ValueError(f"Concept <{name}> produced no tokens in {text!r} (empty class phrase?)")
        if pos[-1] >= max_len - 1:
            raise ValueError(
                f"Concept <{name}> in prompt {prompt!r} is cut off by the {max_len}-token limit "
                f"(its tokens end at position {pos[-1]}, the last usable one is {max_len - 2}). "
                "Shorten the prompt or move the concept earlier."
            )
        spans.append(ConceptSpan(name, pos))
    return ParsedPrompt(prompt, text, spans)


def phrase_token_count(phrase: str, tokenizer) -> int:
    """Number of BPE tokens of a class phrase: the number of rows of a concept's Delta."""
    ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
    if len(ids) == 0:
        raise ValueError(f"class phrase {phrase!r} has no tokens")
    return len(ids)


def prompt_lists(prompt: str | list[str], negative_prompt: str | list[str] | None) -> tuple[list[str], list[str]]:
    """``(prompts, negatives)`` as equal-length lists (negatives default to ""); ``ValueError`` otherwise."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt must be a non-empty string or list of strings")
    if negative_prompt is None:
        return prompts, [""] * len(prompts)
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    return prompts, negatives
