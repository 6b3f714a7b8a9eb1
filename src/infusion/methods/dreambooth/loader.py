"""DreamBooth folders (a whole fine-tuned pipeline) and the identifier phrase its prompts use."""

from __future__ import annotations

from infusion.core.base_models import load_base_pipeline
from infusion.methods.customization import Customization


def identifier_phrase(meta_or_args: dict, class_phrase: str) -> str:
    return f"{meta_or_args.get('identifier', 'sks')} {class_phrase}"


class DreamBoothCustomization(Customization):
    """A fine-tuned pipeline folder; ``<name>`` -> ``"sks <class>"``."""

    owns_pipeline = True

    def attach(self, pipe):

        return load_base_pipeline(str(self.path))  # SD or SDXL, as the folder's model_index.json says

    def phrase(self) -> str:
        return identifier_phrase(self.meta, self.class_phrase)
