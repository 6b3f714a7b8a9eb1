"""Evaluation prompts: DreamBench's 25 prompts (DreamBooth, Ruiz et al. 2023) in ``<name>`` syntax.

The packaged ``data/dreambench_prompts.txt`` is DreamBench's ``prompts_and_classes.txt`` verbatim:
subject -> class, then 25 prompts for objects and 25 for live subjects written as
``'a {0} {1} in the jungle'.format(unique_token, class_token)``. Here ``{0} {1}`` (identifier +
class noun) becomes ``<name>``, which every method maps to its own text (Infusion: the class phrase).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from infusion.world.concepts import CONCEPTS, eval_prompts

LIVE_CLASSES = frozenset({"cat", "dog"})  # DreamBench's live subjects are its cats and dogs
_PROMPT = re.compile(r"'(.*)'\.format\(unique_token, class_token\)")


@lru_cache(maxsize=1)
def _dreambench() -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    text = (resources.files("infusion") / "data" / "dreambench_prompts.txt").read_text()
    head, _, prompts = text.partition("Object Prompts")
    objects_part, _, live_part = prompts.partition("Live Subject Prompts")
    classes = dict(line.split(",", 1) for line in head.splitlines() if "," in line and not line.startswith("subject_name"))
    objects = tuple(m.group(1) for m in _PROMPT.finditer(objects_part))
    live = tuple(m.group(1) for m in _PROMPT.finditer(live_part))
    if len(objects) != 25 or len(live) != 25:
        raise ValueError(f"dreambench_prompts.txt is damaged: {len(objects)} object and {len(live)} live prompts (want 25 each)")
    return classes, objects, live


def dreambench_classes() -> dict[str, str]:
    """DreamBench subject -> class noun (30 subjects)."""
    return dict(_dreambench()[0])


def dreambench_prompts(name: str, kind: str = "object") -> list[str]:
    """The 25 DreamBench prompts for concept ``name``: ``kind`` "object" or "live"."""
    if kind not in ("object", "live"):
        raise ValueError(f"kind must be 'object' or 'live', got {kind!r}")
    _, objects, live = _dreambench()
    return [p.replace("{0} {1}", f"<{name}>") for p in (objects if kind == "object" else live)]


def prompts_for(name: str, class_phrase: str, prompt_set: str = "dreambench") -> list[str]:
    """Evaluation prompts of a concept.

    prompt_set: ``dreambench`` (live prompts for cats and dogs, object prompts otherwise),
    ``dreambench-object``, ``dreambench-live``, ``world`` (the built-in world's eval prompts), or a
    text file with one prompt per line, each containing ``{}`` where the concept goes.
    """
    if prompt_set == "dreambench":
        return dreambench_prompts(name, "live" if class_phrase.strip().lower() in LIVE_CLASSES else "object")
    if prompt_set in ("dreambench-object", "dreambench-live"):
        return dreambench_prompts(name, prompt_set.split("-")[1])
    if prompt_set == "world":
        return world_prompts(name, class_phrase)
    from pathlib import Path

    path = Path(prompt_set)
    if not path.is_file():
        raise ValueError(
            f"unknown prompt set {prompt_set!r}: use dreambench, dreambench-object, dreambench-live, world, "
            "or a file with one prompt per line containing {} for the concept"
        )
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    bad = [ln for ln in lines if "{}" not in ln]
    if bad or not lines:
        raise ValueError(f"{path}: every prompt line needs {{}} where the concept goes (e.g. 'a {{}} on the beach'); bad: {bad[:2]}")
    return [ln.replace("{}", f"<{name}>") for ln in lines]


def world_prompts(name: str, class_phrase: str) -> list[str]:
    """The built-in world's evaluation prompts for a concept (from ``infusion.world``)."""

    if name not in CONCEPTS:
        raise ValueError(
            f"--prompts world has prompts for the built-in world concepts ({', '.join(CONCEPTS)}), not <{name}>; "
            "use --prompts FILE with one prompt per line containing {}"
        )
    return list(eval_prompts(name))
