"""Text and concept fidelity on the world, read by the probes (the roles CLIP-T and DINO-I play).

text fidelity:    share of the attributes a prompt names (background; per object: class, colour,
                  size, position) that the image shows, as the SceneProbe reads it.
concept fidelity: cosine similarity between the ObjectProbe embedding of the generated object
                  (the slot where the prompt's concept class is found) and the mean embedding of
                  the concept's reference images.

The scorer built on these for the evaluation harness and the demo is
``infusion.world.scorer.WorldProbeScorer``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from infusion.world import scenes
from infusion.world.probes import CLASS_OR_NONE, COLOR2_OR_NONE, COLOR_NAMES, SIZE_NAMES, SLOTS, crop_object

_BG_WORDS = {p: bg for bg, phrases in scenes.BACKGROUND_PHRASES.items() for p in phrases}
_POS_WORDS = sorted(((p, pos) for pos, ps in scenes.POSITION_PHRASES.items() for p in ps), key=lambda x: -len(x[0]))
_COLOR = "|".join(scenes.COLORS)
_PATTERN_OF_WORD = {w: p for p, w in scenes.PATTERN_WORDS.items()}
_OBJ = re.compile(
    r"\b(?:(?P<size>" + "|".join(scenes.SIZES) + r")\s+)?(?:(?P<color>" + _COLOR + r")\s+)?"
    r"(?:and\s+(?P<color2>" + _COLOR + r")\s+(?P<pattern>" + "|".join(_PATTERN_OF_WORD) + r")\s+)?(?P<cls>" + "|".join(scenes.CLASSES) + r")\b"
)


@dataclass
class NamedAttributes:
    """What a prompt names: ``background`` or None, and per object a dict with ``cls`` and maybe ``color``, ``size``,
    ``position``, ``pattern`` with ``color2`` (text fidelity does not judge the pattern: the scene probe has no
    pattern head; the object probe's look reading is the look rate's)."""

    background: str | None = None
    objects: list[dict] = field(default_factory=list)

    def count(self) -> int:
        """How many attributes text fidelity judges (a named pattern is not one of them; each named class also has
        its number of objects judged)."""
        return ((self.background is not None) + sum(len(set(o) - {"pattern", "color2"}) for o in self.objects)
                + len({o["cls"] for o in self.objects}))


def parse_caption(text: str) -> NamedAttributes:
    """The attributes a caption of the world's grammar names (placeholders already substituted).

    >>> parse_caption("a small red ball in the top left corner, on the snow").objects
    [{'cls': 'ball', 'size': 'small', 'color': 'red', 'position': 'top left'}]
    >>> parse_caption("a yellow and blue dipped ball").objects
    [{'cls': 'ball', 'color': 'yellow', 'pattern': 'hsplit', 'color2': 'blue'}]
    """
    t = " ".join(text.lower().split())
    named = NamedAttributes()
    for phrase, bg in _BG_WORDS.items():
        if phrase in t:
            named.background = bg
            t = t.replace(phrase, " ")
            break
    matches = list(_OBJ.finditer(t))
    for k, m in enumerate(matches):
        obj = {"cls": m.group("cls")}
        for key in ("size", "color"):
            if m.group(key):
                obj[key] = m.group(key)
        if m.group("pattern"):
            obj["pattern"], obj["color2"] = _PATTERN_OF_WORD[m.group("pattern")], m.group("color2")
        tail = t[m.end() : matches[k + 1].start() if k + 1 < len(matches) else len(t)]
        for phrase, pos in _POS_WORDS:
            if re.search(r"\b" + phrase + r"\b", tail):
                obj["position"] = pos
                break
        named.objects.append(obj)
    return named


@dataclass
class SceneReading:
    """SceneProbe's reading of one image: background and per slot class/colour/size (argmax) and class probabilities (5, 7)."""

    background: str
    cls: list[str]
    color: list[str]
    size: list[str]
    cls_prob: torch.Tensor


@torch.no_grad()
def read_scenes(scene_probe, images: torch.Tensor) -> list[SceneReading]:
    """(B, 3, 32, 32) in [-1, 1] -> one SceneReading per image."""
    out = scene_probe(images)
    prob = out["cls"].softmax(-1)
    bg, cls, col, size = (out[k].argmax(-1) for k in ("background", "cls", "color", "size"))
    return [
        SceneReading(
            scenes.BACKGROUNDS[bg[i]],
            [CLASS_OR_NONE[j] for j in cls[i]],
            [COLOR_NAMES[j] for j in col[i]],
            [SIZE_NAMES[j] for j in size[i]],
            prob[i],
        )
        for i in range(len(images))
    ]


def locate(reading: SceneReading, obj: dict) -> int:
    """The slot index where ``obj`` (a named-object dict) is: its named position, else the slot most likely to hold its class."""
    if "position" in obj:
        return SLOTS.index(obj["position"])
    return int(reading.cls_prob[:, CLASS_OR_NONE.index(obj["cls"])].argmax())


def judge(reading: SceneReading, named: NamedAttributes) -> dict[str, list[bool]]:
    """Per attribute kind, whether each named attribute shows: ``{"background": [..], "cls": [..], ...}``.

    Each attribute is judged on its own: position counts as shown when the named class stands in
    the named slot; an object's colour and size are read where the object stands (its named slot
    when the class is there, else the slot most likely to hold its class), so a red ball drawn in
    the wrong corner still shows "red" and misses only "top left". Each named class also has its count judged:
    one object asked and two drawn (or none) is a miss.
    """
    res: dict[str, list[bool]] = {k: [] for k in ("background", "cls", "color", "size", "position", "count")}
    if named.background is not None:
        res["background"].append(reading.background == named.background)
    for obj in named.objects:
        s = locate(reading, obj)
        there = reading.cls[s] == obj["cls"]
        if "position" in obj:
            res["position"].append(there)
        if not there:
            s = locate(reading, {"cls": obj["cls"]})
        found = reading.cls[s] == obj["cls"]
        res["cls"].append(found or obj["cls"] in reading.cls)
        for k in ("color", "size"):
            if k in obj:
                res[k].append(found and getattr(reading, k)[s] == obj[k])
    for c in dict.fromkeys(o["cls"] for o in named.objects):  # each named class once, in the prompt's order
        res["count"].append(reading.cls.count(c) == sum(o["cls"] == c for o in named.objects))
    return res


def text_fidelity(reading: SceneReading, named: NamedAttributes) -> float:
    """Share of the named attributes the image shows (1.0 when the prompt names nothing)."""
    flags = [f for v in judge(reading, named).values() for f in v]
    return sum(flags) / len(flags) if flags else 1.0


@torch.no_grad()
def object_embeddings(object_probe, images: torch.Tensor, boxes) -> torch.Tensor:
    """(B, 3, 32, 32) images and one pixel box each -> (B, 128) L2-normalised appearance embeddings."""
    return F.normalize(object_probe.embed(crop_object(images, boxes)), dim=-1)


def slot_box(reading: SceneReading, slot: int, size: int = scenes.IMAGE_SIZE) -> tuple[int, int, int, int]:
    """Nominal pixel box of an object in ``slot`` of the size the probe reads there."""
    obj = scenes.WorldObject("ball", "red", reading.size[slot], SLOTS[slot])
    return scenes.object_box(obj, size)


def concept_fidelity(object_probe, images: torch.Tensor, readings: list[SceneReading], cls: str, reference: torch.Tensor) -> torch.Tensor:
    """(B,) cosine similarity of each image's ``cls`` object to ``reference`` (128,) (a normalised mean embedding)."""
    boxes = [slot_box(r, locate(r, {"cls": cls})) for r in readings]
    return object_embeddings(object_probe, images, boxes) @ F.normalize(reference, dim=0)


@dataclass(frozen=True)
class ObjectLook:
    """What the ObjectProbe reads on one object: colour, pattern and second colour (``"none"`` when plain)."""

    color: str
    pattern: str
    color2: str

    @classmethod
    def of(cls, obj: scenes.WorldObject) -> "ObjectLook":
        return cls(obj.color, obj.pattern, obj.color2 or "none")

    def describe(self) -> str:
        if self.pattern == "plain":
            return f"plain {self.color}"
        return f"{self.color} with {scenes.PATTERN_LOOKS[self.pattern].format(self.color2)}"


@torch.no_grad()
def read_looks(object_probe, images: torch.Tensor, boxes) -> list[ObjectLook]:
    """(B, 3, 32, 32) images in [-1, 1] and one pixel box each -> the ObjectProbe's reading of each object's look."""

    out = object_probe(crop_object(images, boxes))
    col, pat, col2 = (out[k].argmax(-1).tolist() for k in ("color", "pattern", "color2"))
    return [ObjectLook(COLOR_NAMES[c], scenes.PATTERNS[p], COLOR2_OR_NONE[c2]) for c, p, c2 in zip(col, pat, col2)]


def concept_looks(object_probe, images: torch.Tensor, readings: list[SceneReading], obj: dict) -> list[ObjectLook]:
    """The look of the object ``obj`` (a named-object dict: ``cls`` and maybe ``position``) in each image,
    read where it stands (``locate``) in the size the SceneProbe reads there."""
    boxes = [slot_box(r, locate(r, obj)) for r in readings]
    return read_looks(object_probe, images, boxes)


def has_look(look: ObjectLook, target: ObjectLook) -> bool:
    """The look rate's test: colour, pattern and second colour all read as the target's."""
    return look == target
