"""What every method's generation loader is: a ``Customization`` attached to a base pipeline."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from ..prompts import substitute


class Customization:
    """One loaded customization (a trained file or folder) attached to a pipeline.

    Subclasses (one per method, beside the method's training code) override ``attach``,
    ``phrase``, and where needed ``encode`` (text states, plus per-layer states for P+) and
    ``disabled`` (a context in which the pipeline is the base model again).
    """

    method: str = ""
    composable: bool = False  # several files of this method can be loaded together
    owns_pipeline: bool = False  # the file is a whole model (DreamBooth): attach returns it
    layer_states_key: str | None = None  # cross_attention_kwargs key for per-layer text states

    def __init__(self, path: str | os.PathLike, meta: dict[str, str]):
        from ..files import storage_bytes

        self.path = Path(path)
        self.meta = meta
        self.name = meta["name"]
        self.class_phrase = meta["class_phrase"]
        self.storage_bytes = storage_bytes(path)

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


@contextmanager
def stock_attention(pipe):
    """Context in which every attention layer of ``pipe.unet`` runs diffusers' stock SDPA processor
    (the base model, for methods that customise through attention processors)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    saved = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    try:
        yield
    finally:
        pipe.unet.set_attn_processor(saved)


def encode_texts(pipe, texts: list[str]) -> torch.Tensor:
    """Plain prompts -> text states (B, L, C) with the pipeline's tokenizer and text encoder."""
    ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]
