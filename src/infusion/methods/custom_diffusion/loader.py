"""Custom Diffusion folders: K/V weights (diffusers' ``load_attn_procs``) + the modifier token(s).

A folder holds one concept (``infusion train``) or several (``infusion merge``: the authors' constrained merge,
``methods/custom_diffusion/merge.py``; its ``infusion.json`` lists them under ``concepts``). A merged folder loads as
one ``Customization`` per concept, all sharing the folder's weights, so a prompt names each: ``"<a> and <b> ..."``.
"""

from __future__ import annotations

import json

from infusion.core.base_models import LOAD_LOCK
from infusion.methods.customization import (
    Customization,
    remember_base_attention,
    stock_attention,
    warn_on_other_base,
)

WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"
EMBEDS = "learned_embeds.safetensors"
CONCEPTS_KEY = "concepts"  # metadata of a merged folder: JSON list of {"name", "class_phrase"}


def merged_concepts(meta: dict[str, str]) -> list[tuple[str, str]] | None:
    """[(name, class phrase)] of a merged folder's concepts; None for a one-concept folder."""
    raw = meta.get(CONCEPTS_KEY)
    return [(c["name"], c["class_phrase"]) for c in json.loads(raw)] if raw else None


class CustomDiffusionCustomization(Customization):
    """K/V weights as diffusers' ``CustomDiffusionAttnProcessor`` + the modifier token;
    ``<name>`` -> ``"<name> <class>"``."""

    @classmethod
    def load_all(cls, files, metas, base_loader):
        if len(files) > 1:
            raise ValueError(f"Custom Diffusion loads one folder at a time (a second folder's K/V weights would replace "
                             f"the first's), got {len(files)}: merge them into one first with `infusion merge "
                             f"--model MODEL --out FOLDER {' '.join(map(str, files))}` (its authors' constrained merge)")
        concepts = merged_concepts(metas[0])
        if concepts is None:
            return super().load_all(files, metas, base_loader)
        custom = [cls(files[0], {**metas[0], "name": n, "class_phrase": c}) for n, c in concepts]
        for c in custom[1:]:
            c.storage_bytes = 0  # one folder on disk: counted once
        with LOAD_LOCK:
            pipe = base_loader()
            warn_on_other_base(pipe, custom[:1])
            pipe = custom[0].attach(pipe)  # every token and the merged weights at once
        pipe.set_progress_bar_config(disable=True)
        return pipe, custom

    def attach(self, pipe):
        concepts = merged_concepts(self.meta)
        if concepts is None:
            pipe.load_textual_inversion(str(self.path / EMBEDS), token=f"<{self.name}>")
        else:
            from safetensors.torch import load_file

            embeds = load_file(str(self.path / EMBEDS))
            tokens = [f"<{n}>" for n, _ in concepts]
            pipe.load_textual_inversion([embeds[t] for t in tokens], token=tokens)
        remember_base_attention(pipe)  # ``disabled`` brings these back (the base model's numerics)
        pipe.unet.load_attn_procs(str(self.path), weight_name=WEIGHTS, _pipeline=pipe)
        return pipe

    def phrase(self) -> str:
        return f"<{self.name}> {self.class_phrase}"

    def disabled(self, pipe):
        return stock_attention(pipe)
