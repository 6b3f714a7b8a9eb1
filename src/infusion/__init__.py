"""infusion: customise text-to-image diffusion models without overfitting.

Start here:
    infusion.methods.infusion.processor  the Infusion cross-attention processor (paper Eq. 7, 9)
    infusion.methods.infusion.pipeline   InfusionPipeline (base | customised images from one UNet call per step)
    infusion.methods.infusion.concept    Concept files (safetensors)
    infusion.methods                     every method, one package each, and their registry
    infusion.customized                  load_customized: one generator for any method's file
    infusion.training                    the one trainer
    infusion.core                        what every method shares (file format, ``<name>`` prompts, model loading)
"""

__version__ = "0.1.0"

from infusion.core import quiet_logs  # noqa: E402  (stdlib logging only: stays fast)

quiet_logs.install()

_LAZY = {
    "Concept": "infusion.methods.infusion.concept",
    "InfusionPipeline": "infusion.methods.infusion.pipeline",
    "InfusionAttnProcessor": "infusion.methods.infusion.processor",
    "InfusionPlan": "infusion.methods.infusion.processor",
    "parse_prompt": "infusion.core.placeholders",
    "load_customized": "infusion.customized",
}


def __getattr__(name):  # lazy: `import infusion` stays fast (no torch/diffusers import)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infusion' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
