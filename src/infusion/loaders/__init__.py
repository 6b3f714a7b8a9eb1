"""Generation loaders, one module per method: they read what ``infusion train`` wrote and attach it to a base
pipeline (``customized.load_customized`` picks one by the file's ``method``). Nothing here imports the trainer,
so a user who only generates never loads it; training modules import their loader from here."""

from __future__ import annotations

import importlib

# method -> (module, class)
LOADERS = {
    "ti": ("textual_inversion", "TokenCustomization"),
    "pplus": ("pplus", "PPlusCustomization"),
    "dreambooth": ("dreambooth", "DreamBoothCustomization"),
    "lora": ("lora", "LoRACustomization"),
    "custom-diffusion": ("custom_diffusion", "CustomDiffusionCustomization"),
    "perfusion": ("perfusion", "PerfusionCustomization"),
}


def customization_class(method: str, path=None):
    """The loader of ``method``; a plugin method (``register_method``) brings its own ``customization_cls``."""
    if method in LOADERS:
        module, name = LOADERS[method]
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    from ..training.methods import get_method  # plugins only: they live with their training code

    cls = getattr(get_method(method), "customization_cls", None)
    if cls is None:
        raise ValueError(f"{path or method}: method {method!r} has no generation loader")
    return cls
