"""infusion: customise text-to-image diffusion models without overfitting.

Start here:
    infusion.processor   the Infusion cross-attention processor (paper Eq. 7, 9)
    infusion.prompts     ``<name>`` placeholders -> class phrase + token positions
    infusion.concept     Concept files (safetensors)
    infusion.pipeline    InfusionPipeline (base | customised images from one UNet call per step)
    infusion.training    the trainer and its method plugins
"""

__version__ = "0.1.0"

_LAZY = {
    "Concept": "infusion.concept",
    "InfusionPipeline": "infusion.pipeline",
    "InfusionAttnProcessor": "infusion.processor",
    "InfusionPlan": "infusion.processor",
    "parse_prompt": "infusion.prompts",
}


def __getattr__(name):  # lazy: `import infusion` stays fast (no torch/diffusers import)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infusion' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
