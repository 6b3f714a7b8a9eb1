"""Customisation methods, one module each; they register themselves with ``register_method``."""

from .base import Method, MLMTextSide, TextBatch, available_methods, get_method, mlm_methods, register_method, supports_mlm

BUILTIN_MODULES = ["infusion", "ti", "pplus", "dreambooth", "lora", "custom_diffusion", "perfusion"]


def _load_builtin() -> None:
    import importlib

    for mod in BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


__all__ = [
    "MLMTextSide", "Method", "TextBatch", "available_methods", "get_method", "mlm_methods", "register_method", "supports_mlm",
]
