"""The generation-side contract of a method: a ``Customization`` (one trained file or folder) attached to a base
pipeline. ``infusion.customized.load_customized`` asks the file's method for its ``Customization`` class (the
registry) and calls only the hooks below, so it never names a method."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from infusion.core.base_models import LOAD_LOCK
from infusion.core.customization_files import base_fingerprint, storage_bytes
from infusion.core.model_families import fingerprint_modules
from infusion.core.placeholders import substitute


class Customization:
    """One loaded customization (a trained file or folder) attached to a pipeline.

    Subclasses (one per method, in ``infusion/methods/<name>/loader.py``) override ``attach``, ``phrase``, and
    where needed ``encode`` (text states, plus per-layer states for P+) and ``disabled`` (a context in which the
    pipeline is the base model again). A method with a sampling loop of its own (Infusion: two streams in one UNet
    call) overrides the class-level hooks ``load_all``, ``generate`` and ``eps`` instead.
    """

    composable: bool = False  # several files of this method can be loaded together
    owns_pipeline: bool = False  # the file is a whole model (DreamBooth): attach returns it
    keeps_base_weights: bool = False  # attaching changes no weight: an already loaded base pipeline can be shared
    attention_maps: bool = False  # its pipeline returns the base model's attention on the concept (``return_attention``)
    layer_states_key: str | None = None  # cross_attention_kwargs key for per-layer text states

    def __init__(self, path: str | os.PathLike, meta: dict[str, str]):
        self.path = Path(path)
        self.meta = meta
        self.name = meta["name"]
        self.class_phrase = meta["class_phrase"]
        self.storage_bytes = storage_bytes(path)

    @property
    def method(self) -> str:
        """The method that wrote the file (its metadata's ``method``)."""
        return self.meta.get("method", "")

    # -- class-level hooks: the whole group of files of one method ------------------------------------------
    @classmethod
    def load_all(cls, files: list[Path], metas: list[dict[str, str]], base_loader) -> tuple[object, list]:
        """Load ``files`` (all of this method) -> (the pipeline to generate with, one ``Customization`` each).

        base_loader(pipeline_cls=None): the base pipeline ``load_customized`` was given, or a fresh one of
        ``pipeline_cls`` (default: the family's stock pipeline) loaded from the id/path it was given."""
        if len(files) > 1 and not cls.composable:
            raise ValueError(f"method {metas[0].get('method')!r} loads one concept at a time; got {len(files)} files")
        custom = [cls(f, m) for f, m in zip(files, metas)]
        with LOAD_LOCK:  # attaching builds modules too (LoRA layers, tokens): one load at a time per process
            if cls.owns_pipeline:
                pipe = custom[0].attach(None)
            else:
                pipe = base_loader()
                warn_on_other_base(pipe, custom)
                for c in custom:
                    pipe = c.attach(pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe, custom

    @classmethod
    def generate(cls, model, prompts: list[str], negatives: list[str] | None, latents, common: dict,
                 return_base: bool):
        """The method's own sampling for ``CustomizedModel`` ``model``: ``(images, base images or None)``.
        negatives: None when the caller gave none; common: the pipeline's keyword arguments (steps, guidance,
        size, generator, output_type). ``None`` (the default): the generic path of ``CustomizedModel``
        (substituted prompts through the pipeline, base images by ``disabled``)."""
        return None

    @classmethod
    def eps(cls, model, z_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor | None:
        """The method's own noise predictor (B, 4, h, w); ``None`` (the default): the generic one."""
        return None

    def attach(self, pipe):
        """Load onto ``pipe`` (in place); return the pipeline to generate with."""
        return pipe

    def phrase(self) -> str:
        """The text that replaces ``<name>`` in prompts."""
        return self.class_phrase

    def encode(self, pipe, prompts: list[str]) -> tuple[torch.Tensor, dict | None]:
        """Prompts with ``<name>`` -> (text states (B, L, C), per-layer states {layer: (B, L, C)} or None)."""
        texts = [substitute(p, {self.name: self.phrase()})[0] for p in prompts]
        return encode_texts(pipe, texts), None

    def disabled(self, pipe):
        """Context in which ``pipe`` generates as the base model."""
        return nullcontext()

    def concept_rows(self, flags: list[bool]):
        """Context for one UNet batch whose rows are ``flags`` (True: the row's prompt names a loaded concept), for
        loaders that treat concept-free rows differently (Perfusion's ``concept_rows_only``)."""
        return nullcontext()


BASE_PROCESSORS = "_infusion_base_attn_processors"  # attribute of a UNet: its processors before any customization


def remember_base_attention(pipe) -> None:
    """Record ``pipe.unet``'s attention processors as the base model's, once: call before a loader replaces them
    (the first customization attached to a pipeline sees the base model's; later ones must not record theirs)."""
    if getattr(pipe.unet, BASE_PROCESSORS, None) is None:
        object.__setattr__(pipe.unet, BASE_PROCESSORS, dict(pipe.unet.attn_processors))


@contextmanager
def stock_attention(pipe):
    """Context in which every attention layer of ``pipe.unet`` runs the base model's processor (for methods that
    customise through attention processors): the processors the pipeline had before the first customization was
    attached (``remember_base_attention``), so a base pipeline with other processors than diffusers' default (the
    classic ``AttnProcessor``, xformers, ...) keeps its numerics; diffusers' SDPA ``AttnProcessor2_0`` when none
    was recorded."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    saved = pipe.unet.attn_processors
    base = getattr(pipe.unet, BASE_PROCESSORS, None)
    # set_attn_processor pops from the dict it is given: a copy each time
    pipe.unet.set_attn_processor(dict(base) if base is not None else AttnProcessor2_0())
    try:
        yield
    finally:
        pipe.unet.set_attn_processor(saved)


def encode_texts(pipe, texts: list[str]) -> torch.Tensor:
    """Plain prompts -> text states (B, L, C) with the pipeline's tokenizer and text encoder."""
    ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


def warn_on_other_base(pipe, custom: list[Customization]) -> None:
    """A customization trained on other base weights still loads, with a warning (DESIGN section 3)."""
    here = base_fingerprint(*fingerprint_modules(pipe))
    for c in custom:
        theirs = c.meta.get("base_fingerprint")
        if theirs and theirs != here:
            warnings.warn(f"<{c.name}> ({c.path}) was trained on other base weights ({c.meta.get('base_model')}, "
                          f"fingerprint {theirs}; this model: {here}): it will load, but results may differ",
                          UserWarning, stacklevel=4)
