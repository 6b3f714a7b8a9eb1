"""The paper's Table 2 without people: pairwise preference of one model over another on the same noise.

For each (concept, prompt, seed) both models generated from the same noise; a probe decides which image is better:
"text alignment" by text fidelity, "image alignment" by concept fidelity to the concept's references. The rule:
the higher value wins (1), the lower loses (0), equal values or a value the probe could not read (NaN: no object
found) tie and count 1/2. The table gives the share won with a 95% interval resampling (concept, prompt) pairs
within each concept (``evaluation.intervals``; a prompt's seeds move together).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from infusion.evaluation.intervals import mean_interval

TIE = 1e-9  # values this close are equal (probe outputs are shares or cosines)
CRITERIA = {"text": "text_fidelity", "image": "concept_fidelity"}


def outcome(a: float | None, b: float | None) -> float:
    """1 if ``a`` beats ``b``, 0 if it loses, 0.5 for a tie or an unreadable value."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or abs(a - b) <= TIE:
        return 0.5
    return 1.0 if a > b else 0.0


@dataclass(frozen=True)
class Preference:
    """Share of pairs ``a`` wins (ties count half), its 95% interval, and how many pairs it rests on."""

    share: float
    low: float
    high: float
    pairs: int
    prompts: int


def preference(a: list[dict], b: list[dict], criterion: str) -> Preference:
    """Preference of model ``a`` over ``b``; each a list of per-image records with ``concept``, ``prompt``, ``seed``
    and the criterion's metric (``CRITERIA``). Only images both models have are compared."""
    key = CRITERIA[criterion]
    theirs = {(r["concept"], r["prompt"], r["seed"]): r for r in b}
    by_prompt: dict[tuple, list[float]] = defaultdict(list)
    for r in a:
        other = theirs.get((r["concept"], r["prompt"], r["seed"]))
        if other is not None:
            by_prompt[(r["concept"], r["prompt"])].append(outcome(r.get(key), other.get(key)))
    if not by_prompt:
        raise ValueError("the two record sets share no (concept, prompt, seed): nothing to compare")
    strata: dict[str, list[float]] = defaultdict(list)
    for (concept, _), wins in sorted(by_prompt.items()):
        strata[concept].append(sum(wins) / len(wins))
    share, low, high = mean_interval(list(strata.values()))
    return Preference(share, low, high, sum(len(w) for w in by_prompt.values()), len(by_prompt))
