"""The context-rich prompt set of the diverse-context MLM regulariser (DESIGN section 7).

Prompts are templates x word lists in five categories (backgrounds, relations to objects,
outfits/wearing, interactions, styles). Each prompt holds the concept reference as a placeholder
(``<concept>`` unless told otherwise) that ``infusion.core.placeholders.parse_prompt`` later replaces by the
method's concept text (``"<mycat>"`` for TI, ``"sks cat"`` for DreamBooth, ...).

A template is a string with ``{c}`` for the concept and ``{slot}`` for a word list entry. The set
of all renderings is enumerated by index (mixed radix over the template's slots), never
materialised, so ``len()`` is exact and sampling ``n`` distinct prompts is cheap. Sampling is
balanced over categories and deterministic under a seed.
"""

from __future__ import annotations

import math
import random
import re
import string
from dataclasses import dataclass
from typing import Mapping, Sequence

CATEGORIES = ("backgrounds", "relations", "outfits", "interactions", "styles")
DEFAULT_PLACEHOLDER = "<concept>"
_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")  # "a orange car" -> "an orange car"

# --- everyday vocabulary -------------------------------------------------------------------------

EVERYDAY_WORDS: dict[str, tuple[str, ...]] = {
    "bg": (
        "on a sandy beach", "in a snowy forest", "on a busy city street", "on top of a mountain",
        "in a kitchen", "in a living room", "on a wooden table", "in a flower garden", "in a desert",
        "under the sea", "on the moon", "in a library", "in a park", "on a sailing boat",
        "in front of the Eiffel Tower", "in a field of sunflowers", "on a snowy rooftop",
        "in a tropical jungle", "next to a calm lake", "in a classroom", "on a bed", "in a bathtub",
        "on a red carpet", "in a cozy cafe", "at a train station", "in a spaceship", "in a castle",
        "on a farm", "in a supermarket", "on a skateboard ramp", "in a museum", "on a bridge",
        "in a cave", "on a grassy hill", "in a swimming pool", "at a birthday party", "in a garage",
        "on a rocky shore", "in a bamboo forest", "in the Grand Canyon", "on a frozen lake",
        "in a wheat field", "in Times Square", "in a greenhouse", "on a picnic blanket",
        "in an office", "at a waterfall", "in a temple", "on a balcony", "in a treehouse",
        "on a pile of autumn leaves", "in a boxing ring", "on a stage", "in a playground",
        "in a market square", "on the surface of Mars", "in a lavender field", "in a subway car",
        "on a pirate ship", "in a hot air balloon",
    ),
    "time": (
        "at sunset", "at night", "in the morning", "at dawn", "in autumn", "in winter",
        "on a rainy day", "on a sunny day", "in the fog", "during a snowstorm", "under a starry sky",
        "at noon",
    ),
    "shot": ("a photo", "a picture", "a close-up photo", "a wide-angle photo", "a blurry photo", "a cropped photo"),
    "rel": (
        "next to", "behind", "in front of", "on top of", "under", "beside", "near", "to the left of",
        "to the right of", "inside", "leaning against", "far away from",
    ),
    "obj": (
        "chair", "car", "bicycle", "teapot", "laptop", "umbrella", "vase", "lamp", "bucket", "book",
        "guitar", "pumpkin", "backpack", "suitcase", "clock", "mug", "basket", "box", "bench",
        "table", "sofa", "bowl", "bottle", "ball", "kite", "teddy bear", "candle", "apple", "cake",
        "pillow", "tree", "rock", "fence", "door", "window", "mirror", "boot", "hat stand",
        "traffic cone", "fire hydrant", "mailbox", "toy truck", "piano", "television", "plant pot",
        "watering can", "shopping cart", "snowman", "sandcastle", "motorcycle",
    ),
    "color": (
        "red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white", "brown",
        "gray", "golden", "silver", "striped", "polka-dot", "shiny",
    ),
    "outfit": (
        "scarf", "hat", "sweater", "pair of sunglasses", "crown", "bow tie", "raincoat", "cape",
        "spacesuit", "tuxedo", "wizard hat", "santa hat", "chef hat", "backpack", "necklace",
        "helmet", "bandana", "hoodie", "tutu", "pair of boots", "kimono", "life jacket",
        "party hat", "flower crown", "headband",
    ),
    "role": (
        "chef", "pirate", "astronaut", "wizard", "firefighter", "doctor", "king", "police officer",
        "superhero", "detective", "cowboy", "ninja", "knight", "sailor", "painter", "scientist",
        "clown", "mermaid", "vampire", "angel",
    ),
    "verb": (
        "playing with", "holding", "sitting on", "looking at", "chasing", "sleeping next to",
        "jumping over", "riding", "hiding behind", "pushing", "carrying", "climbing", "standing on",
        "sniffing", "kicking", "hugging",
    ),
    "agent": (
        "little girl", "old man", "woman", "boy", "dog", "cat", "robot", "teddy bear", "parrot",
        "horse", "monkey", "panda", "penguin", "fox", "rabbit", "dinosaur", "frog", "owl",
        "squirrel", "baby",
    ),
    "agent_verb": (
        "playing with", "holding", "hugging", "painting", "taking a photo of", "looking at",
        "feeding", "walking with", "chasing", "sitting next to", "talking to", "dancing with",
    ),
    "style": (
        "watercolor painting", "oil painting", "pencil sketch", "3D render", "cartoon drawing",
        "pixel art image", "mosaic", "comic book illustration", "stained glass window",
        "charcoal drawing", "marble sculpture", "origami model", "embroidery", "graffiti mural",
        "low-poly model", "digital painting", "vintage photograph", "polaroid photo",
        "anime illustration", "children's book illustration", "clay figurine", "neon sign",
        "tattoo design", "woodcut print", "lego model",
    ),
    "artist": (
        "Van Gogh", "Picasso", "Claude Monet", "Rembrandt", "Hokusai", "Salvador Dali", "Andy Warhol",
        "Frida Kahlo", "Gustav Klimt", "Studio Ghibli", "Edvard Munch", "Johannes Vermeer",
    ),
}

EVERYDAY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "backgrounds": (
        "{shot} of a {c} {bg}",
        "a {c} {bg} {time}",
        "{shot} of a {c} {bg} {time}",
    ),
    "relations": (
        "a {c} {rel} a {color} {obj}",
        "{shot} of a {c} {rel} a {obj}",
        "a {c} {rel} a {obj} {bg}",
    ),
    "outfits": (
        "a {c} wearing a {color} {outfit}",
        "{shot} of a {c} wearing a {outfit} {bg}",
        "a {c} dressed as a {role}",
        "a {c} dressed as a {role} {bg}",
    ),
    "interactions": (
        "a {c} {verb} a {color} {obj}",
        "a {c} {verb} a {obj} {bg}",
        "a {agent} {agent_verb} a {c}",
        "a {agent} {agent_verb} a {c} {bg}",
    ),
    "styles": (
        "a {style} of a {c}",
        "a {style} of a {c} {bg}",
        "a painting of a {c} in the style of {artist}",
        "a {style} of a {c} in the style of {artist}",
    ),
}

# --- the built-in world's vocabulary -------------------------------------------------------------

# Used only if ``infusion.world.scenes`` cannot be imported; otherwise its word lists are used.
WORLD_PLACEHOLDER_WORDS: dict[str, tuple[str, ...]] = {
    "background": ("on the grass", "on the sand", "in the snow", "at night"),
    "obj": ("ball", "box", "tree", "house"),
    "color": ("red", "green", "blue", "yellow"),
    "size": ("small", "large"),
    "position": ("on the left", "on the right", "in the center"),
}

# The world's caption grammar ("a photo of a small red ball in the top left corner on the grass",
# "on the sand, a mug and a blue star"): contexts are backgrounds, places in the image and other
# objects. The world has no outfits, verbs or styles: those categories are empty here.
WORLD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "backgrounds": (
        "{prefix} a {c} {background}",
        "{prefix} a {c} {position} {background}",
        "{background}, a {c} {position}",
    ),
    "relations": (
        "{prefix} a {c} and a {size} {color} {obj} {background}",
        "{prefix} a {color} {obj} {position} and a {c} {background}",
        "{background}, a {size} {color} {obj} and a {c} {position}",
    ),
}


def world_words() -> dict[str, tuple[str, ...]]:
    """Word lists of the built-in world (``infusion.world.scenes``), phrases as its captions say them."""
    try:
        from infusion.world import scenes
    except ImportError:
        return dict(WORLD_PLACEHOLDER_WORDS, prefix=("a photo of", "a picture of"))
    return {
        "background": tuple(p for phrases in scenes.BACKGROUND_PHRASES.values() for p in phrases),
        "obj": tuple(scenes.CLASSES),
        "color": tuple(scenes.COLORS),
        "size": tuple(scenes.SIZES),
        "position": tuple(p for phrases in scenes.POSITION_PHRASES.values() for p in phrases),
        "prefix": tuple(p for p in scenes._PREFIXES if p),
    }


def _slots(template: str) -> tuple[str, ...]:
    """Slot names of a template in order, ``c`` excluded; ValueError on malformed braces."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"template {template!r} has malformed braces: {e}") from None
    if fields.count("c") != 1:
        raise ValueError(f"template {template!r} must contain the concept slot {{c}} exactly once")
    return tuple(f for f in fields if f != "c")


def _check_words(words: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    out = {}
    for slot, items in words.items():
        items = tuple(items)
        for w in items:
            if not isinstance(w, str) or not w.strip() or any(ch in w for ch in "{}<>\n"):
                raise ValueError(f"word list {slot!r} has a bad entry {w!r}: use non-empty text without {{}}<> or newlines")
        if len(set(items)) != len(items):
            dupes = sorted({w for w in items if items.count(w) > 1})
            raise ValueError(f"word list {slot!r} repeats {dupes}: prompts would not be distinct")
        out[slot] = items
    return out


@dataclass(frozen=True)
class _Template:
    category: str
    text: str
    slots: tuple[str, ...]
    size: int  # number of renderings


class ContextPromptSet:
    """All renderings of ``templates`` (category -> template strings) over ``words`` (slot -> list).

    Templates whose slots have an empty or missing word list are dropped (a vocabulary without
    outfits simply has no outfit prompts); a category left with no template is empty.
    """

    def __init__(
        self,
        templates: Mapping[str, Sequence[str]],
        words: Mapping[str, Sequence[str]],
        placeholder: str = DEFAULT_PLACEHOLDER,
    ):
        unknown = set(templates) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown prompt categories {sorted(unknown)}; use some of {list(CATEGORIES)}")
        if not re.fullmatch(r"<[A-Za-z0-9][A-Za-z0-9_\-\.]*>", placeholder):
            raise ValueError(f"placeholder must look like <name> (see infusion.core.placeholders), got {placeholder!r}")
        self.words = _check_words(words)
        self.placeholder = placeholder
        self.templates: dict[str, list[_Template]] = {c: [] for c in CATEGORIES}
        for cat, texts in templates.items():
            for text in texts:
                slots = _slots(text)
                if all(self.words.get(s) for s in slots):
                    size = math.prod(len(self.words[s]) for s in slots)
                    self.templates[cat].append(_Template(cat, text, slots, size))
        if not any(self.templates.values()):
            raise ValueError("no template can be rendered: every template uses a slot with no words")

    def category_size(self, category: str) -> int:
        """Number of renderings in one category."""
        return sum(t.size for t in self.templates[category])

    def __len__(self) -> int:
        return sum(self.category_size(c) for c in CATEGORIES)

    @property
    def categories(self) -> list[str]:
        """The non-empty categories."""
        return [c for c in CATEGORIES if self.templates[c]]

    def render(self, category: str, index: int) -> str:
        """Rendering number ``index`` (0 <= index < category_size) of ``category``."""
        if not 0 <= index < self.category_size(category):
            raise ValueError(f"index {index} out of range for category {category!r} ({self.category_size(category)} prompts)")
        for t in self.templates[category]:
            if index < t.size:
                break
            index -= t.size
        values = {}
        for slot in reversed(t.slots):  # mixed radix, last slot fastest
            index, k = divmod(index, len(self.words[slot]))
            values[slot] = self.words[slot][k]
        return _AN.sub(r"\1n ", t.text.format(c=self.placeholder, **values))

    def generate(self, n: int, seed: int = 0) -> list[str]:
        """``n`` distinct prompts, balanced over the non-empty categories, shuffled; same seed, same list."""
        if n < 0 or n > len(self):
            raise ValueError(f"cannot draw {n} distinct prompts: this set holds {len(self)}")
        rng = random.Random(seed)
        cats = self.categories
        quota = dict.fromkeys(cats, 0)
        left = n
        while left:  # even split, the categories that run out hand their share to the others
            open_cats = [c for c in cats if quota[c] < self.category_size(c)]
            share, extra = divmod(left, len(open_cats))
            for i, c in enumerate(open_cats):
                take = min(share + (i < extra), self.category_size(c) - quota[c])
                quota[c] += take
                left -= take
        prompts = [self.render(c, i) for c in cats for i in rng.sample(range(self.category_size(c)), quota[c])]
        rng.shuffle(prompts)
        if len(set(prompts)) != len(prompts):
            raise ValueError("templates render duplicate prompts; make templates and word lists distinct")
        return prompts


def everyday_prompt_set(placeholder: str = DEFAULT_PLACEHOLDER) -> ContextPromptSet:
    """The everyday-vocabulary set (the paper's setting): tens of thousands of prompts."""
    return ContextPromptSet(EVERYDAY_TEMPLATES, EVERYDAY_WORDS, placeholder)


def world_prompt_set(
    backgrounds: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
    positions: Sequence[str] | None = None,
    prefixes: Sequence[str] | None = None,
    templates: Mapping[str, Sequence[str]] = WORLD_TEMPLATES,
    placeholder: str = DEFAULT_PLACEHOLDER,
) -> ContextPromptSet:
    """The set in the built-in world's vocabulary (backgrounds and relations to objects only).

    Every word list left ``None`` comes from ``infusion.world.scenes`` (``world_words()``);
    backgrounds and positions are phrases ("on the grass", "in the top left corner").
    """
    given = {"background": backgrounds, "obj": objects, "color": colours, "size": sizes, "position": positions,
             "prefix": prefixes}
    defaults = world_words()
    words = {k: tuple(v) if v is not None else defaults[k] for k, v in given.items()}
    return ContextPromptSet(templates, words, placeholder)


def prompt_set(vocab: str = "everyday", placeholder: str = DEFAULT_PLACEHOLDER) -> ContextPromptSet:
    """``"everyday"`` or ``"world"``."""
    if vocab == "everyday":
        return everyday_prompt_set(placeholder)
    if vocab == "world":
        return world_prompt_set(placeholder=placeholder)
    raise ValueError(f"unknown vocabulary {vocab!r}; use 'everyday' or 'world'")
