"""Concept files (DESIGN section 3): one Delta per ``attn2`` layer, safetensors + string metadata.

File layout: tensor key = diffusers module name of the layer
(``down_blocks.0.attentions.0.transformer_blocks.0.attn2``), shape ``[n_tokens, D]``; a concept of the
``query`` variant (``processor`` module docstring) adds ``<layer>.query_a`` ``[n_tokens, D, r]`` and
``<layer>.query_b`` ``[n_tokens, r, D]`` per layer and is written as format version 2, as is a concept of
the own-maps variant (metadata ``maps = own``: C's own map places the Delta); metadata holds format
name/version, method, name, class phrase, base model id, base fingerprint, model family (``sd`` | ``sdxl``)
and layer widths (``"320x5,640x5,1280x6"``: width x layers), training settings (JSON) and the library
version. Writes are atomic (temp file + rename); a file holding NaN or Inf is refused
at save and at load.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from infusion import __version__
from infusion.core.customization_files import base_fingerprint  # noqa: F401  (re-exported)
from infusion.core.model_families import FAMILY_NAMES
from infusion.core.placeholders import NAME_PATTERN
from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic
from infusion.methods.infusion.processor import layer_widths

FORMAT_NAME = "infusion-concept"
FORMAT_VERSION = "1"  # plain concepts (the paper's Infusion)
FORMAT_VERSION_QUERY = "2"  # a variant beyond the paper: the query variant's terms, or own maps
MAPS = ("base", "own")  # whose attn2 maps place the residual: F's (the paper's) or C's own
QUERY_SUFFIXES = (".query_a", ".query_b")


@dataclass
class Concept:
    """A trained Infusion concept.

    deltas: layer name -> Delta, shape [n_tokens, D] (D = that layer's value width)
    query:  ``query`` variant only: layer name -> (A [n_tokens, D, r], B [n_tokens, r, D]); empty otherwise
    maps:   ``"base"`` (C takes F's attn2 maps, the paper's) or ``"own"`` (C's own; ``processor`` docstring)
    """

    name: str
    class_phrase: str
    deltas: dict[str, torch.Tensor]
    base_model: str = ""
    base_fingerprint: str = ""
    method: str = "infusion"
    training: dict = field(default_factory=dict)
    query: dict = field(default_factory=dict)
    t_max: float = 1.0  # inject at timesteps t < t_max * T only (1.0: every step, the paper's)
    family: str = ""  # "sd" | "sdxl" (families.py); "" in files older than the field
    maps: str = "base"

    def __post_init__(self):
        import re

        if not re.fullmatch(NAME_PATTERN, self.name):
            raise ValueError(
                f"concept name {self.name!r} is not usable as <name> in prompts: use letters, digits, _ - . "
                "(starting with a letter or digit)"
            )
        if not self.class_phrase.strip():
            raise ValueError("class phrase must not be empty (e.g. 'cat', 'teddy bear')")
        if not self.deltas:
            raise ValueError("a concept needs at least one layer Delta")
        if self.maps not in MAPS:
            raise ValueError(f"maps={self.maps!r}: use one of {', '.join(MAPS)}")
        rows = {t.shape[0] for t in self.deltas.values()}
        if len(rows) != 1 or any(t.ndim != 2 for t in self.deltas.values()):
            raise ValueError(f"every Delta must be [n_tokens, D] with one n_tokens; got rows {sorted(rows)}")
        if self.query:
            if set(self.query) != set(self.deltas):
                raise ValueError("query terms must cover exactly the layers of the Deltas")
            for layer, (a, b) in self.query.items():
                n, d = self.deltas[layer].shape
                if a.ndim != 3 or b.ndim != 3 or a.shape[:2] != (n, d) or b.shape != (n, a.shape[2], d):
                    raise ValueError(f"query terms of {layer}: want A [{n}, {d}, r] and B [{n}, r, {d}], got "
                                     f"{tuple(a.shape)} and {tuple(b.shape)}")

    @property
    def residual(self) -> str:
        """``"value"`` (the paper's constant Delta) or ``"query"`` (Delta + a per-pixel query term)."""
        return "query" if self.query else "value"

    @property
    def n_tokens(self) -> int:
        return next(iter(self.deltas.values())).shape[0]

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.deltas.values()) + sum(a.numel() + b.numel() for a, b in self.query.values())

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION_QUERY if self.query or self.maps != "base" else FORMAT_VERSION,
            "method": self.method,
            "name": self.name,
            "class_phrase": self.class_phrase,
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "training": json.dumps(self.training, sort_keys=True, default=str),
            "library_version": __version__,
            **({"t_max": repr(self.t_max)} if self.t_max != 1.0 else {}),
            **({"family": self.family} if self.family else {}),
            **({"maps": self.maps} if self.maps != "base" else {}),
            "layer_widths": self.widths_summary(),
        }

    def widths_summary(self) -> str:
        """``"320x5,640x5,1280x6"``: each Delta width and how many layers have it."""
        from collections import Counter

        counts = Counter(t.shape[1] for t in self.deltas.values())
        return ",".join(f"{d}x{counts[d]}" for d in sorted(counts))

    def save(self, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
        """Write atomically (temp file in the same folder, then rename). fp16 by default: 2 bytes/value."""
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.deltas.items()}
        for layer, (a, b) in self.query.items():
            for suffix, t in zip(QUERY_SUFFIXES, (a, b)):
                tensors[layer + suffix] = t.detach().to("cpu", dtype).contiguous()
        for k, v in tensors.items():
            if not torch.isfinite(v).all():
                raise ValueError(f"refusing to save concept <{self.name}>: Delta of {k} is not finite (NaN/inf)")
        return save_safetensors_atomic(tensors, path, self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Concept":
        """Read a concept file; ``ValueError`` if it is not one."""
        path = Path(path)
        tensors, meta = read_safetensors(path, "concept file")
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{path} is not an Infusion concept file (format={meta.get('format')!r}, "
                f"method={meta.get('method')!r})"
            )
        if meta.get("format_version") not in (FORMAT_VERSION, FORMAT_VERSION_QUERY):
            raise ValueError(f"{path}: concept format version {meta.get('format_version')!r} is not supported")
        deltas = {k: v for k, v in tensors.items() if not k.endswith(QUERY_SUFFIXES)}
        query = {k: (tensors[k + QUERY_SUFFIXES[0]], tensors[k + QUERY_SUFFIXES[1]])
                 for k in deltas if k + QUERY_SUFFIXES[0] in tensors and k + QUERY_SUFFIXES[1] in tensors}
        if len(query) * 2 != len(tensors) - len(deltas):
            raise ValueError(f"{path}: query terms without their layer's Delta, or A without B")
        bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"{path}: concept <{meta.get('name')}> holds NaN or Inf in {len(bad)} tensor(s) "
                             f"(first: {bad[0]}); it would generate broken images. Retrain it, or use an earlier "
                             "checkpoint (-stepN file)")
        return cls(
            name=meta["name"],
            class_phrase=meta["class_phrase"],
            deltas=deltas,
            query=query,
            t_max=float(meta.get("t_max", 1.0)),
            family=meta.get("family", ""),
            maps=meta.get("maps", "base"),
            base_model=meta.get("base_model", ""),
            base_fingerprint=meta.get("base_fingerprint", ""),
            method=meta.get("method", "infusion"),
            training=json.loads(meta.get("training") or "{}"),
        )

    def check_compatible(self, unet, fingerprint: str | None = None, family: str | None = None) -> None:
        """Raise ``ValueError`` when the concept was trained on another model family (naming both), or naming the
        first layer whose name or width does not match ``unet``; warn when the base fingerprint differs."""

        if family and self.family and family != self.family:
            raise ValueError(
                f"concept <{self.name}> was trained on {'an' if self.family == 'sdxl' else 'a'} "
                f"{FAMILY_NAMES.get(self.family, self.family)} model "
                f"({self.base_model or 'unknown'}; layers {self.widths_summary()}) and cannot load into this "
                f"{FAMILY_NAMES.get(family, family)} model: train it again on this model"
            )
        widths = layer_widths(unet)
        missing = sorted(set(widths) - set(self.deltas))
        extra = sorted(set(self.deltas) - set(widths))
        if missing or extra:
            raise ValueError(
                f"concept <{self.name}> does not fit this UNet: "
                + (f"layers missing from the file: {missing[:3]}{'...' if len(missing) > 3 else ''}; " if missing else "")
                + (f"layers not in the model: {extra[:3]}{'...' if len(extra) > 3 else ''}" if extra else "")
                + f" (trained on {self.base_model or 'an unknown model'})"
            )
        for layer, d in widths.items():
            if self.deltas[layer].shape[1] != d:
                raise ValueError(
                    f"concept <{self.name}>: layer {layer} has width {self.deltas[layer].shape[1]} in the file "
                    f"but {d} in the model (trained on {self.base_model or 'another model'})"
                )
        if fingerprint and self.base_fingerprint and fingerprint != self.base_fingerprint:
            warnings.warn(
                f"concept <{self.name}> was trained on other base weights ({self.base_model or 'unknown'}, "
                f"fingerprint {self.base_fingerprint}; this model: {fingerprint}): it will load, but results may differ",
                UserWarning,
                stacklevel=2,
            )
