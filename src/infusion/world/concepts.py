"""Built-in personal concepts: instances of a world class with a two-colour pattern no word names.

Each has 5 training images in one narrow context (one background, one position, one size: the
setting in which baselines overfit) and 22 held-out evaluation prompts that move it elsewhere:
other backgrounds, positions and sizes, and next to other objects (the role DreamBench's 25
prompts play). Prompts write the concept as ``<name>`` (DESIGN section 2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from infusion.world import scenes


@dataclass(frozen=True)
class WorldConcept:
    """A concept: its look (``obj``: class, colours, pattern) and its one training context."""

    name: str
    obj: scenes.WorldObject
    background: str

    @property
    def class_phrase(self) -> str:
        return self.obj.cls


def _concept(name, cls, color, pattern, color2, background, size, position):
    return WorldConcept(name, scenes.WorldObject(cls, color, size, position, pattern, color2), background)


CONCEPTS: dict[str, WorldConcept] = {
    c.name: c
    for c in (
        # patterns the VAE's latents carry (hsplit, vsplit, diagonal; docs/world.md): quarters, band and
        # core still come back blurred, so no concept is built on them
        _concept("sunball", "ball", "yellow", "hsplit", "blue", "grass", "large", "center"),
        _concept("slashbox", "box", "red", "diagonal", "white", "wood", "large", "center"),
        _concept("halfmug", "mug", "green", "vsplit", "pink", "snow", "large", "bottom left"),
        _concept("halfstar", "star", "orange", "vsplit", "purple", "night", "large", "top right"),
        _concept("duotree", "tree", "purple", "hsplit", "yellow", "sand", "large", "center"),
    )
}
N_TRAIN_IMAGES = 5


def get_concept(name: str) -> WorldConcept:
    if name not in CONCEPTS:
        raise ValueError(f"unknown world concept {name!r}; built-in concepts: {', '.join(CONCEPTS)}")
    return CONCEPTS[name]


def concept_scene(name: str, index: int, **overrides) -> scenes.Scene:
    """Training scene ``index`` of concept ``name``; ``overrides`` (size, position, background) move it."""
    c = get_concept(name)
    bg = overrides.pop("background", c.background)
    obj = scenes.WorldObject(**{**c.obj.__dict__, **overrides})
    return scenes.Scene(bg, (obj,), jitter_seed=hash_name(name) * 1000 + index)


def hash_name(name: str) -> int:
    """A stable small integer of a name (Python's ``hash`` changes between runs)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(name)) % 100_003


def concept_images(name: str, n: int = N_TRAIN_IMAGES, size: int = scenes.IMAGE_SIZE):
    """The ``n`` training images of concept ``name`` (PIL, same context, different jitter)."""
    return [scenes.render(concept_scene(name, i), size) for i in range(n)]


def write_concept_images(name: str, directory: str | Path, n: int = N_TRAIN_IMAGES) -> list[Path]:
    """Write the training images of ``name`` as PNGs into ``directory``; returns their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(concept_images(name, n)):
        p = d / f"{name}_{i:02d}.png"
        im.save(p)
        paths.append(p)
    return paths


def eval_prompts(name: str) -> list[str]:
    """22 held-out prompts with ``<name>``: new backgrounds, positions, sizes, other objects."""
    c = get_concept(name)
    rng = random.Random(hash_name(name))
    tok = f"<{name}>"
    other_bgs = [b for b in scenes.BACKGROUNDS if b != c.background]
    bg = lambda b: scenes.BACKGROUND_PHRASES[b][0]  # noqa: E731
    pos = lambda p: scenes.POSITION_PHRASES[p][0]  # noqa: E731
    other_size = next(s for s in scenes.SIZES if s != c.obj.size)
    prompts = [f"a photo of a {tok}"]
    prompts += [f"a photo of a {tok} {bg(b)}" for b in other_bgs]  # 7 backgrounds
    for p in [p for p in scenes.POSITIONS if p != c.obj.position]:  # 4 positions
        prompts.append(f"a {tok} {pos(p)}, {bg(rng.choice(scenes.BACKGROUNDS))}")
    prompts.append(f"a {other_size} {tok} {bg(c.background)}")
    prompts.append(f"a {other_size} {tok} {bg(rng.choice(other_bgs))}")
    corners = [p for p in scenes.CORNERS if p != c.obj.position]
    for k in range(5):  # other objects beside it
        p1, p2 = rng.sample(corners, 2)
        other_cls = rng.choice([k for k in scenes.CLASSES if k != c.obj.cls])
        color = rng.choice(list(scenes.COLORS))
        other = scenes.object_phrase(scenes.WorldObject(other_cls, color, "small", p2), {"color": color})
        prompts.append(f"a {tok} {pos(p1)} and {other} {pos(p2)}, {bg(rng.choice(other_bgs))}")
    for k in range(3):  # several changes at once
        p = rng.choice([p for p in scenes.POSITIONS if p != c.obj.position])
        prompts.append(f"a {other_size} {tok} {pos(p)} {bg(rng.choice(other_bgs))}")
    return prompts


def validation_prompts(name: str) -> list[str]:
    """12 prompts with ``<name>`` for choosing settings (a sweep), never any of ``eval_prompts(name)``:
    the same kinds of change (backgrounds, positions, sizes, a second object), worded with the world's
    other phrasings ("in the snow", "at the top left") and drawn with another random stream."""
    c = get_concept(name)
    rng = random.Random(hash_name(name) + 7_777)
    tok = f"<{name}>"
    other_bgs = [b for b in scenes.BACKGROUNDS if b != c.background]
    bg = lambda b: scenes.BACKGROUND_PHRASES[b][1]  # noqa: E731
    pos = lambda p: scenes.POSITION_PHRASES[p][1]  # noqa: E731
    other_size = next(s for s in scenes.SIZES if s != c.obj.size)
    prompts = [f"a picture of a {tok} {bg(b)}" for b in rng.sample(other_bgs, 4)]
    for p in rng.sample([p for p in scenes.POSITIONS if p != c.obj.position], 3):
        prompts.append(f"an image of a {tok} {pos(p)} {bg(rng.choice(other_bgs))}")
    prompts.append(f"a picture of a {other_size} {tok} {bg(rng.choice(other_bgs))}")
    corners = [p for p in scenes.CORNERS if p != c.obj.position]
    for _ in range(2):
        p1, p2 = rng.sample(corners, 2)
        other_cls = rng.choice([k for k in scenes.CLASSES if k != c.obj.cls])
        color = rng.choice(list(scenes.COLORS))
        other = scenes.object_phrase(scenes.WorldObject(other_cls, color, "small", p2), {"color": color})
        prompts.append(f"a picture of a {tok} {pos(p1)} and {other} {pos(p2)}")
    prompts.append(f"an image of a {tok}")
    prompts.append(f"a picture of a {other_size} {tok} {pos(rng.choice(corners))} {bg(rng.choice(other_bgs))}")
    return prompts


def concept_renders(name: str) -> tuple[list, list[str]]:
    """Renders of concept ``name`` away from its training context (4 backgrounds x 3 positions x 2 sizes) with
    their captions: what a perfect model would draw, for checking concept measures such as the look rate."""
    c = get_concept(name)
    ims, texts = [], []
    for k, bg in enumerate(("snow", "water", "bricks", "road")):
        for pos in ("top left", "bottom right", "center"):
            for size in scenes.SIZES:
                ims.append(scenes.render(concept_scene(name, 10 + k, background=bg, position=pos, size=size)))
                texts.append(f"a {size} {c.obj.cls} {scenes.POSITION_PHRASES[pos][0]} {scenes.BACKGROUND_PHRASES[bg][0]}")
    return ims, texts
