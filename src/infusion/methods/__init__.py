"""Customisation methods, one package each (``infusion.methods.<name>/``: its trainer, its loader, its file format).

Each package registers a ``MethodSpec`` in its ``__init__``; the registry finds them by scanning this folder and the
``infusion.methods`` entry-point group, so adding a method is adding a folder. Contracts: ``base.Method`` (training)
and ``customization.Customization`` (generation).
"""

from infusion.methods.registry import (
    ENTRY_POINT_GROUP,
    MethodSpec,
    available_methods,
    customization_class,
    discover,
    get_method,
    get_spec,
    mlm_methods,
    reference_mlm_weight,
    register,
)

__all__ = [
    "ENTRY_POINT_GROUP", "MethodSpec", "available_methods", "customization_class", "discover", "get_method",
    "get_spec", "mlm_methods", "reference_mlm_weight", "register",
]
