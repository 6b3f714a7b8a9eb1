"""What a base model brings besides its weights (DESIGN section 11): its training captions, the defaults measured
for it, the prompts and scorers its evaluation uses, its built-in concepts.

``model_profile(model)`` is the one place that tells the built-in world (``infusion.world.profile``) from a Stable
Diffusion checkpoint; every other module asks the profile instead of testing the model's name.
"""

from __future__ import annotations

# Simple templates (Textual Inversion's list, shortened); "{}" is the concept placeholder.
CAPTION_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of the {}",
)


class ModelProfile:
    """A Stable Diffusion checkpoint (any family): the papers' defaults."""

    is_builtin_world = False
    caption_templates: tuple[str, ...] = CAPTION_TEMPLATES  # training captions, "{}" = the concept
    flip: bool = True  # add mirrored copies of the training images unless --flip/--no-flip says otherwise
    prompt_set: str = "dreambench"  # evaluation prompts (``infusion.evaluation.prompts``)
    contextualizer: str | None = None  # the MLM contextualizer shipped for its text encoder (None: none)
    mlm_budget = {"steps": 100_000, "batch_size": 128, "lr": 1e-4}  # ``infusion mlm pretrain`` (the paper's)

    def method_defaults(self, method_cls) -> dict:
        """Defaults that replace a method's paper defaults on this model (``{"lr": ...}``); none here."""
        return {}

    def caption_corpus(self, n: int) -> list[str] | None:
        """``n`` captions of what the model was trained on (Perfusion's key covariance), when known; else None."""
        return None

    def lfd_examples(self, n: int) -> tuple[list, list[str]] | None:
        """``n`` (image, caption) pairs of non-customised content for the latent Fisher divergence; None: the
        user must give ``--lfd-data``."""
        return None

    def scorer(self):
        """The model's own scorer (text and concept fidelity without CLIP/DINO), or None."""
        return None

    def concepts(self) -> dict[str, str]:
        """Built-in concepts whose training images ship with the model (the app's picker): name -> class phrase."""
        return {}

    def concept_images(self, name: str, folder) -> list:
        """Write the built-in concept ``name``'s training images into ``folder``; return their paths."""
        raise ValueError(f"this model has no built-in concept {name!r}")


def model_profile(model) -> ModelProfile:
    """The profile of ``model`` (a ``--model`` string or path; a loaded pipeline is a checkpoint)."""
    from infusion.world import is_world_model  # light: paths only

    if is_world_model(model):
        from infusion.world.profile import WorldProfile

        return WorldProfile()
    return ModelProfile()
