"""The built-in world as a base model: what differs from a Stable Diffusion checkpoint, in one object
(``infusion.core.model_profiles.model_profile("world")`` returns it)."""

from __future__ import annotations

from pathlib import Path

from infusion.core.model_profiles import ModelProfile
from infusion.world import scenes
from infusion.world.concepts import CONCEPTS, write_concept_images
from infusion.world.scenes import example
from infusion.world.scorer import WorldProbeScorer

# The built-in world's text encoder only knows its captions' words ("cropped", "clean", "close-up",
# "bright", "good" never occur there): on the world, captions use its own prefixes (``scenes._PREFIXES``).
WORLD_CAPTION_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a rendering of a {}",
)


class WorldProfile(ModelProfile):
    """The world model (32 px scenes): its caption words, measured defaults, probes and concepts."""

    is_builtin_world = True
    caption_templates = WORLD_CAPTION_TEMPLATES
    flip = False  # the world's looks have a left and a right half: a mirror image is another look
    prompt_set = "world"
    contextualizer = "world"  # ``--contextualizer world``: the one pretrained for its text encoder
    mlm_budget = {"steps": 2000, "batch_size": 32, "lr": 5e-4}  # its small text encoder

    def method_defaults(self, method_cls) -> dict:
        """The defaults each method measured on the world (``Method.world_defaults``)."""
        return dict(getattr(method_cls, "world_defaults", {}) or {})

    def caption_corpus(self, n: int) -> list[str]:

        return [scenes.caption_scene(scenes.sample_scene(s), s).text for s in range(20_000_000, 20_000_000 + n)]

    def lfd_examples(self, n: int):

        pairs = [example(10_000_000 + i) for i in range(n)]  # scenes far from any training seed
        return [img for img, _, _ in pairs], [cap.text for _, cap, _ in pairs]

    def scorer(self):

        try:
            return WorldProbeScorer()
        except FileNotFoundError as e:
            raise ValueError(f"the world's probes are not trained in this install ({e}); pass --no-probes or "
                             "--clip/--dino") from e

    def concepts(self) -> dict[str, str]:

        return {name: c.class_phrase for name, c in CONCEPTS.items()}

    def concept_images(self, name: str, folder) -> list[Path]:

        return write_concept_images(name, folder)
