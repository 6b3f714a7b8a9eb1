"""DreamBooth folders (a whole fine-tuned pipeline) and the identifier phrase its prompts use."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from infusion.core.base_models import LOAD_LOCK, family_class
from infusion.core.model_families import SDXL, family_of_files
from infusion.methods.customization import Customization


def identifier_phrase(meta_or_args: dict, class_phrase: str) -> str:
    return f"{meta_or_args.get('identifier', 'sks')} {class_phrase}"


def load_folder(path) -> StableDiffusionPipeline:
    """A DreamBooth output folder -> its pipeline (SD or SDXL, as its ``model_index.json`` says), weights read from
    safetensors only (``use_safetensors=True``: a folder holding pickled ``.bin`` weights is refused, never
    unpickled); ``ValueError`` naming the folder when it cannot be loaded that way."""
    family = family_of_files(path)
    if family is None:
        raise ValueError(f"{path} is not a DreamBooth folder (no model_index.json)")
    cls = family_class(StableDiffusionPipeline, family)
    kwargs = {} if family == SDXL else {"safety_checker": None, "requires_safety_checker": False}
    try:
        with LOAD_LOCK:  # see core.base_models: one load at a time per process
            pipe = cls.from_pretrained(str(path), use_safetensors=True, **kwargs)
    except OSError as e:
        raise ValueError(f"{path}: a DreamBooth folder is loaded from safetensors weights only, and this one could "
                         f"not be ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    pipe.model_id = str(path)
    return pipe


class DreamBoothCustomization(Customization):
    """A fine-tuned pipeline folder; ``<name>`` -> ``"sks <class>"``."""

    owns_pipeline = True

    def attach(self, pipe):
        return load_folder(self.path)

    def phrase(self) -> str:
        return identifier_phrase(self.meta, self.class_phrase)
