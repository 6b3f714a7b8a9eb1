"""Procedural scenes of the built-in world (DESIGN section 4), deterministic from a seed.

A scene is a background and one or two objects; each object has a class, a colour, a size and
a position, and sometimes a coarse two-colour pattern: the appearance detail personal concepts build
on. The shipped world's captions never name a pattern; ``caption_scene(..., drop={"pattern": p})``
names it with probability 1 - p, always before the class word ("a yellow and blue dipped ball"), for a
world model that can be told a look in words (docs/results.md, "Where the look lives in the world model").
Images are drawn with PIL at ``SUPERSAMPLE`` x the output size and box-filtered down.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
SUPERSAMPLE = 2

BACKGROUNDS = ("snow", "grass", "sand", "water", "bricks", "wood", "night", "road")
# how captions say "on <background>" (every word is a single CLIP token)
BACKGROUND_PHRASES = {
    "snow": ("on the snow", "in the snow"),
    "grass": ("on the grass", "on a lawn"),
    "sand": ("on the sand", "on a beach"),
    "water": ("on the water", "on the sea"),
    "bricks": ("in front of a brick wall", "against a brick wall"),
    "wood": ("on a wooden floor", "on a wooden table"),
    "night": ("under the night sky", "at night"),
    "road": ("on the road", "on the street"),
}
CLASSES = ("ball", "box", "mug", "star", "tree", "house")
COLORS = {
    "red": (215, 35, 35),
    "green": (30, 170, 60),
    "blue": (40, 75, 225),
    "yellow": (245, 215, 30),
    "orange": (245, 130, 20),
    "purple": (140, 50, 190),
    "pink": (250, 135, 195),
    "white": (245, 245, 245),
}
SIZES = {"small": 0.30, "large": 0.46}  # object extent as a fraction of the image side
POSITIONS = {  # object centre as a fraction of the image side (x, y)
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left", "top left"),
    "top right": ("in the top right corner", "at the top right", "top right"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "bottom left"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "bottom right"),
    "center": ("in the center", "in the middle", "center"),
}
CORNERS = ("top left", "top right", "bottom left", "bottom right")
# Two-colour patterns, coarse on purpose: the VAE's latent cell is 4 x 4 px and an object is
# 10-15 px wide, so a pattern must change colour at most once or twice across the object to survive
# encoding. Measured with the step-4,000 VAE: 2 px stripes, 3 x 3 checks, small dots and thin rings
# came back as a mottled blend of the two colours and only a half/half split survived
# (docs/world.md), so no model, and no customisation method, could ever draw them.
PATTERNS = ("plain", "hsplit", "vsplit", "diagonal", "quarters", "band", "core")
PATTERN_LOOKS = {  # for reports: where the second colour ({}) shows
    "plain": "no pattern", "hsplit": "a {} bottom half", "vsplit": "a {} right half", "diagonal": "a {} lower right triangle",
    "quarters": "{} 2 x 2 checks", "band": "a wide {} band across the middle", "core": "a large {} central disc",
}
# how a caption names a pattern, always before the class word: "a {color} and {color2} {word} {class}"
PATTERN_WORDS = {"hsplit": "dipped", "vsplit": "sided", "diagonal": "edged", "quarters": "checked", "band": "banded", "core": "centered"}

# part ids in an object's part map
_BODY, _LIGHT, _DARK, _FIXED, _OUTLINE = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class WorldObject:
    """One object: class, colour, size, position; ``pattern`` with ``color2``: detail captions name only sometimes."""

    cls: str
    color: str
    size: str
    position: str
    pattern: str = "plain"
    color2: str | None = None

    def __post_init__(self):
        _check_choice("class", self.cls, CLASSES)
        _check_choice("colour", self.color, COLORS)
        _check_choice("size", self.size, SIZES)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("pattern", self.pattern, PATTERNS)
        if (self.pattern == "plain") != (self.color2 is None):
            raise ValueError(f"pattern {self.pattern!r} needs color2 exactly when it is not 'plain' (got {self.color2!r})")
        if self.color2 is not None:
            _check_choice("colour", self.color2, COLORS)


@dataclass(frozen=True)
class Scene:
    """A background and its objects (one or two; two objects sit in different corners)."""

    background: str
    objects: tuple[WorldObject, ...]
    jitter_seed: int = 0  # small placement/colour jitter and background texture

    def __post_init__(self):
        _check_choice("background", self.background, BACKGROUNDS)
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a scene holds one or two objects, got {len(self.objects)}")
        if len({o.position for o in self.objects}) != len(self.objects):
            raise ValueError("two objects of a scene must stand at different positions")

    def attributes(self) -> dict:
        """Ground truth as plain data: ``{"background": str, "objects": [dict, ...]}``."""
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}


@dataclass
class Caption:
    """A caption and the attributes it names (``named["objects"][i]`` holds only named keys)."""

    text: str
    named: dict = field(default_factory=dict)


def _check_choice(kind, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(choices)}")


# ----------------------------------------------------------------------------- sampling


def sample_scene(seed: int, two_object_rate: float = 0.3, pattern_rate: float = 0.3) -> Scene:
    """The scene of ``seed`` (same seed, same scene, on every machine)."""
    rng = random.Random(seed)
    bg = rng.choice(BACKGROUNDS)
    n = 2 if rng.random() < two_object_rate else 1
    positions = rng.sample(CORNERS, 2) if n == 2 else [rng.choice(list(POSITIONS))]
    objects = tuple(_sample_object(rng, pos, pattern_rate) for pos in positions)
    return Scene(bg, objects, jitter_seed=rng.randrange(2**31))


def _sample_object(rng: random.Random, position: str, pattern_rate: float) -> WorldObject:
    color = rng.choice(list(COLORS))
    pattern, color2 = "plain", None
    if rng.random() < pattern_rate:
        pattern = rng.choice(PATTERNS[1:])
        color2 = rng.choice([c for c in COLORS if c != color])
    return WorldObject(rng.choice(CLASSES), color, rng.choice(list(SIZES)), position, pattern, color2)


# ----------------------------------------------------------------------------- captions

_PREFIXES = ("a photo of", "a picture of", "an image of", "a rendering of", "")


def object_phrase(obj: WorldObject, named: dict) -> str:
    """'a small red ball' (or 'a small red and blue dipped ball') with only the keys in ``named`` (class always)."""
    words = [named[k] for k in ("size", "color") if k in named]
    if "pattern" in named:
        words += ["and", named["color2"], PATTERN_WORDS[named["pattern"]]]
    words.append(obj.cls)
    phrase = " ".join(words)
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_scene(scene: Scene, seed: int, drop: dict | None = None) -> Caption:
    """A varied caption of ``scene``; each attribute is left unnamed with probability ``drop[k]``.

    Defaults: background 0.2, size 0.3, colour 0.1, position 0.3 (unnamed attributes are what the
    model must learn to vary), pattern 1.0: the shipped world model was trained on captions that never
    name a pattern, so by default none does (and no random draw is spent on it: captions are what they
    always were). With ``drop["pattern"] < 1`` a pattern (with its second colour) is named on a patterned
    object whose colour is named, with probability ``1 - drop["pattern"]`` (docs/results.md, "Where the
    look lives in the world model").
    """
    drop = {"background": 0.2, "size": 0.3, "color": 0.1, "position": 0.3, "pattern": 1.0, **(drop or {})}
    rng = random.Random(seed)
    named: dict = {"objects": []}
    parts = []
    for obj in scene.objects:
        nobj = {"cls": obj.cls}
        for k in ("size", "color", "position"):
            if rng.random() >= drop[k]:
                nobj[k] = getattr(obj, k)
        if obj.pattern != "plain" and "color" in nobj and drop["pattern"] < 1 and rng.random() >= drop["pattern"]:
            nobj["pattern"], nobj["color2"] = obj.pattern, obj.color2
        named["objects"].append(nobj)
        phrase = object_phrase(obj, nobj)
        if "position" in nobj:
            phrase += " " + rng.choice(POSITION_PHRASES[obj.position])
        parts.append(phrase)
    bg = None
    if rng.random() >= drop["background"]:
        named["background"] = scene.background
        bg = rng.choice(BACKGROUND_PHRASES[scene.background])
    text = _assemble(parts, bg, rng)
    return Caption(text, named)


def _assemble(parts: list[str], bg: str | None, rng: random.Random) -> str:
    subject = " and ".join(parts)
    form = rng.randrange(3)
    if bg is None:
        text = f"{rng.choice(_PREFIXES)} {subject}"
    elif form == 0:
        text = f"{rng.choice(_PREFIXES)} {subject} {bg}"
    elif form == 1:
        text = f"{rng.choice(_PREFIXES)} {subject}, {bg}"
    else:
        text = f"{bg}, {subject}"
    return " ".join(text.split())


def example(seed: int, size: int = IMAGE_SIZE, **sample_kwargs):
    """``(image, caption, attributes)`` of ``seed``: the world's unit of data."""
    scene = sample_scene(seed, **sample_kwargs)
    return render(scene, size), caption_scene(scene, seed + 7919), scene.attributes()


# ----------------------------------------------------------------------------- rendering


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image."""
    if size < 8:
        raise ValueError(f"image size must be at least 8 px, got {size}")
    big = size * SUPERSAMPLE
    rng = np.random.default_rng(scene.jitter_seed)
    canvas = _background(scene.background, big, rng)
    for obj in scene.objects:
        _draw_object(canvas, obj, big, rng)
    return Image.fromarray(canvas).resize((size, size), Image.BOX)


def object_box(obj: WorldObject, size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """Nominal ``(left, top, right, bottom)`` pixel box of ``obj`` (without jitter)."""
    cx, cy = POSITIONS[obj.position]
    half = SIZES[obj.size] * size / 2
    return (int(round(cx * size - half)), int(round(cy * size - half)), int(round(cx * size + half)), int(round(cy * size + half)))


def _background(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n, 3) uint8 texture of a background."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    noise = rng.normal(0, 1, (n, n, 1))
    if name == "snow":
        img = np.array([232, 238, 248.0]) + 6 * noise
        img += np.where(rng.random((n, n, 1)) < 0.01, 15, 0)
    elif name == "grass":
        img = np.array([70, 150, 55.0]) + 10 * noise
        blades = (np.sin(xx * 90 + 3 * np.sin(yy * 20)) > 0.6)[..., None]
        img = np.where(blades, img * 0.75, img)
    elif name == "sand":
        img = np.array([222, 198, 140.0]) + 12 * noise + 10 * np.sin(yy * 25 + 2 * np.sin(xx * 9))[..., None]
    elif name == "water":
        wave = np.sin(yy * 60 + 2.5 * np.sin(xx * 14 + rng.uniform(0, 6)))[..., None]
        img = np.array([30, 85, 170.0]) + 25 * (wave > 0.8) + 5 * noise
    elif name == "bricks":
        rows = (yy * 8) % 1
        shift = ((yy * 8).astype(int) % 2) * 0.5
        cols = (xx * 4 + shift) % 1
        mortar = ((rows < 0.12) | (cols < 0.06))[..., None]
        img = np.where(mortar, np.array([200, 195, 185.0]), np.array([165, 70, 50.0]) + 10 * noise)
    elif name == "wood":
        plank = ((yy * 5) % 1 < 0.05)[..., None]
        grain = 12 * np.sin(xx * 40 + 6 * np.sin(yy * 30))[..., None]
        img = np.where(plank, np.array([80, 50, 25.0]), np.array([160, 108, 60.0]) + grain)
    elif name == "night":
        img = np.array([15, 20, 55.0]) + 40 * yy[..., None] * np.array([0.3, 0.3, 1.0]) + 3 * noise
        img = np.where(rng.random((n, n, 1)) < 0.004, 230, img)
    elif name == "road":
        img = np.array([88, 88, 92.0]) + 8 * noise
        line = ((np.abs(yy - 0.5) < 0.02) & ((xx * 4) % 1 < 0.55))[..., None]
        img = np.where(line, np.array([235, 205, 40.0]), img)
    else:
        raise ValueError(f"unknown background {name!r}")
    return np.clip(img, 0, 255).astype(np.uint8)


def _part_map(cls: str, n: int, cx: float, cy: float, s: float) -> np.ndarray:
    """(n, n) uint8 map of part ids of an object of extent ``s`` px centred at ``(cx, cy)``."""
    im = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(im)
    h = s / 2
    w = max(1, int(round(s * 0.08)))
    L, T, R, B = cx - h, cy - h, cx + h, cy + h
    if cls == "ball":
        d.ellipse([L, T, R, B], fill=_BODY, outline=_OUTLINE, width=w)
        d.ellipse([cx - 0.55 * h, cy - 0.6 * h, cx - 0.15 * h, cy - 0.25 * h], fill=_LIGHT)
    elif cls == "box":
        k = 0.3 * s  # depth of the oblique faces
        front = [L, T + k, R - k, B]
        d.polygon([(L, T + k), (L + k, T), (R, T), (R - k, T + k)], fill=_LIGHT, outline=_OUTLINE, width=w)
        d.polygon([(R - k, T + k), (R, T), (R, B - k), (R - k, B)], fill=_DARK, outline=_OUTLINE, width=w)
        d.rectangle(front, fill=_BODY, outline=_OUTLINE, width=w)
    elif cls == "mug":
        d.ellipse([R - 0.55 * s, cy - 0.3 * s, R, cy + 0.3 * s], fill=_OUTLINE)  # handle
        d.ellipse([R - 0.42 * s, cy - 0.17 * s, R - 0.13 * s, cy + 0.17 * s], fill=0)
        d.rounded_rectangle([L, T + 0.1 * s, R - 0.25 * s, B], radius=0.08 * s, fill=_BODY, outline=_OUTLINE, width=w)
        d.ellipse([L, T, R - 0.25 * s, T + 0.22 * s], fill=_DARK, outline=_OUTLINE, width=w)
    elif cls == "star":
        ang = np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, h, 0.45 * h)
        pts = [(cx + r * np.cos(a), cy - r * np.sin(a) + 0.08 * s) for r, a in zip(rad, ang)]
        d.polygon(pts, fill=_BODY, outline=_OUTLINE, width=w)
    elif cls == "tree":
        d.rectangle([cx - 0.09 * s, cy + 0.15 * s, cx + 0.09 * s, B], fill=_FIXED)
        d.polygon([(cx, T), (R - 0.05 * s, cy + 0.25 * s), (L + 0.05 * s, cy + 0.25 * s)], fill=_BODY, outline=_OUTLINE, width=w)
    elif cls == "house":
        d.rectangle([L + 0.08 * s, cy - 0.05 * s, R - 0.08 * s, B], fill=_BODY, outline=_OUTLINE, width=w)
        d.polygon([(cx, T), (R, cy - 0.05 * s), (L, cy - 0.05 * s)], fill=_DARK, outline=_OUTLINE, width=w)
        d.rectangle([cx - 0.1 * s, cy + 0.2 * s, cx + 0.1 * s, B], fill=_FIXED)
    else:
        raise ValueError(f"unknown class {cls!r}")
    return np.asarray(im)


def _pattern_mask(pattern: str, n: int, cx: float, cy: float, s: float) -> np.ndarray:
    """(n, n) bool: where the second colour shows, in object-local coordinates."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    u, v = (xx - cx) / s, (yy - cy) / s  # roughly [-0.5, 0.5] over the object
    if pattern == "plain":
        return np.zeros((n, n), bool)
    if pattern == "hsplit":  # bottom half
        return v > 0
    if pattern == "vsplit":  # right half
        return u > 0
    if pattern == "diagonal":  # lower right triangle
        return u + v > 0
    if pattern == "quarters":  # 2 x 2 checks
        return (u > 0) != (v > 0)
    if pattern == "band":  # a wide horizontal band through the middle
        return np.abs(v) < 0.17
    if pattern == "core":  # a large central disc
        return u**2 + v**2 < 0.26**2
    raise ValueError(f"unknown pattern {pattern!r}")


def _draw_object(canvas: np.ndarray, obj: WorldObject, n: int, rng: np.random.Generator) -> None:
    """Paint ``obj`` into ``canvas`` (n, n, 3) uint8, in place."""
    cx, cy = POSITIONS[obj.position]
    jx, jy = rng.uniform(-0.03, 0.03, 2)
    s = SIZES[obj.size] * n * rng.uniform(0.93, 1.07)
    cx, cy = (cx + jx) * n, (cy + jy) * n
    parts = _part_map(obj.cls, n, cx, cy, s)
    tint = rng.uniform(-12, 12, 3)
    color = np.clip(np.array(COLORS[obj.color], float) + tint, 0, 255)
    albedo = np.broadcast_to(color, (n, n, 3)).copy()
    if obj.pattern != "plain":
        c2 = np.clip(np.array(COLORS[obj.color2], float) + tint, 0, 255)
        albedo[_pattern_mask(obj.pattern, n, cx, cy, s)] = c2
    out = canvas.astype(np.float64)
    body = parts == _BODY
    out[body] = albedo[body]
    out[parts == _LIGHT] = np.clip(albedo[parts == _LIGHT] * 0.6 + 255 * 0.4, 0, 255)
    out[parts == _DARK] = albedo[parts == _DARK] * 0.6
    out[parts == _FIXED] = (95, 60, 30)
    out[parts == _OUTLINE] = (30, 30, 30)
    canvas[...] = np.clip(out, 0, 255).astype(np.uint8)
