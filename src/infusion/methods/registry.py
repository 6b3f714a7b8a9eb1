"""The method registry: one ``MethodSpec`` per customisation method, registered by the method's own package.

Discovery fills it without a list of names anywhere: every subpackage of ``infusion.methods`` is imported (its
``__init__`` calls ``register``), then every entry point of the group ``infusion.methods`` (third-party methods:
the entry point names a module that registers, or a ``MethodSpec``). Registration is lazy: a spec names its
trainer and loader as ``"module:Class"`` strings, imported on first use, so generating never imports training code
(peft's ``register_peft_method`` pattern, with lazy classes).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ENTRY_POINT_GROUP = "infusion.methods"
OUTPUTS = ("file", "folder")
FILE_EXT = ".safetensors"


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of the project may know about a method.

    name: ``--method NAME`` and the ``method`` field of its files. trainer / loader: ``"module:Class"`` of its
    ``infusion.methods.base.Method`` and ``infusion.methods.customization.Customization`` subclasses (or the class
    itself). output: ``"file"`` (``<name>.safetensors``) or ``"folder"`` (``<name>/`` with ``infusion.json``).
    mlm_weight: the MLM paper's reference lambda for its text side (DESIGN section 7); ``None``: it has no text-side
    learnables and ``--mlm-lambda`` is refused.
    """

    name: str
    trainer: str | type
    loader: str | type
    output: str = "file"
    mlm_weight: float | None = None

    def __post_init__(self):
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"a method name must be a non-empty word, got {self.name!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"method {self.name!r}: output must be one of {OUTPUTS}, got {self.output!r}")

    def trainer_class(self) -> type:
        return _resolve(self.trainer)

    def loader_class(self) -> type:
        return _resolve(self.loader)

    def output_path(self, folder: str | Path, name: str) -> Path:
        """Where this method's output for concept ``name`` goes in ``folder``."""
        return Path(folder) / (name if self.output == "folder" else f"{name}{FILE_EXT}")


_SPECS: dict[str, MethodSpec] = {}
_discovered = False


def _resolve(target: str | type) -> type:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec``; a second, different spec under the same name is an error."""
    old = _SPECS.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"a method named {spec.name!r} is already registered ({old.trainer})")
    _SPECS[spec.name] = spec
    return spec


def discover() -> None:
    """Import every method package under ``infusion.methods`` and every ``infusion.methods`` entry point (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("infusion.methods")
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            importlib.import_module(f"infusion.methods.{info.name}")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, MethodSpec):
            register(obj)


def rediscover() -> None:
    """Scan again (a method package or entry point installed after the first scan)."""
    global _discovered
    _discovered = False
    discover()


def get_spec(name: str) -> MethodSpec:
    discover()
    if name not in _SPECS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    discover()
    return sorted(_SPECS)


def get_method(name: str) -> type:
    """The trainer class (``Method`` subclass) of method ``name`` (imports its training module)."""
    return get_spec(name).trainer_class()


def customization_class(name: str, path=None) -> type:
    """The generation loader (``Customization`` subclass) of method ``name``; imports no training code."""
    try:
        return get_spec(name).loader_class()
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path else str(e)) from None


def mlm_methods() -> list[str]:
    """Names of the methods that accept ``--mlm-lambda > 0`` (those with a reference MLM weight)."""
    return [m for m in available_methods() if _SPECS[m].mlm_weight is not None]


def reference_mlm_weight(name: str) -> float:
    """The MLM paper's reference lambda of method ``name`` (DESIGN section 7)."""
    w = get_spec(name).mlm_weight
    if w is None:
        raise ValueError(f"method {name!r} has no text side for the MLM regulariser; methods: {', '.join(mlm_methods())}")
    return w
