"""The built-in world's probes as a ``Scorer``: the roles CLIP-T and CLIP-I/DINO-I play on photos.

text fidelity:    share of the attributes a prompt names that the SceneProbe reads in the image
                  (``world.fidelity.text_fidelity``).
concept fidelity: cosine between the ObjectProbe embedding of the generated object of the
                  concept's class and the mean embedding of the references' objects, each found
                  where the SceneProbe locates that class (``world.fidelity.concept_fidelity``).
look:             1.0 when the ObjectProbe reads the generated object's colour, pattern and second
                  colour as the references' (their most common reading), else 0.0; its mean is the
                  look rate ("is that my object?").
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from infusion.world import scenes
from infusion.world.fidelity import (
    concept_fidelity,
    locate,
    object_embeddings,
    parse_caption,
    read_looks,
    read_scenes,
    slot_box,
    text_fidelity,
)
from infusion.world.probes import load_probes


def _to_tensor(images, size: int) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size))) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


class WorldProbeScorer:
    name = "world"
    roles = {"text": "text_fidelity", "image": "concept_fidelity"}

    def __init__(self, scene_probe=None, object_probe=None):

        if scene_probe is None or object_probe is None:
            scene_probe, object_probe = load_probes()
        self.scene_probe, self.object_probe = scene_probe.eval(), object_probe.eval()

    @torch.no_grad()
    def score(self, images, texts, references=(), class_phrase=None):

        if len(images) != len(texts):
            raise ValueError(f"need one text per image: {len(images)} images, {len(texts)} texts")
        x = _to_tensor(images, scenes.IMAGE_SIZE)
        readings = read_scenes(self.scene_probe, x)
        out = {"text_fidelity": np.array([text_fidelity(r, parse_caption(t)) for r, t in zip(readings, texts)])}
        cls = (class_phrase or "").strip()
        if cls in scenes.CLASSES and len(references):
            rx = _to_tensor(references, scenes.IMAGE_SIZE)
            boxes = [slot_box(r, locate(r, {"cls": cls})) for r in read_scenes(self.scene_probe, rx)]
            ref = F.normalize(object_embeddings(self.object_probe, rx, boxes).mean(0), dim=0)  # (128,)
            out["concept_fidelity"] = concept_fidelity(self.object_probe, x, readings, cls, ref).double().numpy()
            target = Counter(read_looks(self.object_probe, rx, boxes)).most_common(1)[0][0]
            looks = read_looks(self.object_probe, x, [slot_box(r, locate(r, {"cls": cls})) for r in readings])
            out["look"] = np.array([float(lk == target) for lk in looks])
        else:  # not a world class, or no references: concept fidelity is undefined
            out["concept_fidelity"] = np.full(len(images), np.nan)
            out["look"] = np.full(len(images), np.nan)
        return out
