"""One generator for any method's file: ``load_customized(model, files) -> CustomizedModel``.

>>> model = load_customized("world", ["mycat.safetensors"])      # any method's --out
>>> out = model(["a photo of <mycat> on the beach"], generator=torch.Generator().manual_seed(0))
>>> out.images, out.base_images, model.method, model.storage_bytes

Prompts use the ``<name>`` syntax for every method; each method's ``Customization`` (its ``loader.py``,
found through the registry from the file's ``method``) maps ``<name>`` to what it needs and may bring its own
loading, sampling and noise prediction (the class-level hooks ``load_all``, ``generate``, ``eps``). This module
names no method.

``CustomizedModel.eps(z_t, t, prompts)`` is the customised noise predictor (an
``infusion.metrics.eps.EpsPredictor``), for metrics such as the latent Fisher divergence.
Base images (``return_base=True``) come from the method's own ``generate`` where it has one (free when it
samples both streams in one call); otherwise the base model runs a second time with ``<name>`` replaced by the class phrase,
from the noise the customised images started from (the caller's generators as they were when the call began) and
with the base model's own attention processors (``Customization.disabled``).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from infusion.core.base_models import load_base_pipeline
from infusion.core.customization_files import read_metadata
from infusion.core.model_families import SDXL, family_of
from infusion.core.placeholders import find_placeholders, prompt_lists, substitute
from infusion.core.unet_eps import UNetEps
from infusion.methods.customization import Customization, encode_texts, stock_attention  # noqa: F401  (re-exported)
from infusion.methods.registry import customization_class


@dataclass
class CustomizedOutput:
    """images: customised; base_images: the base model's for the same noise (or None)."""

    images: object
    base_images: object = None


class CustomizedModel:
    """Generates with a base model plus one or more loaded customizations (see module docstring)."""

    def __init__(self, pipe, customizations: list[Customization], method: str, base_loader=None):
        self.pipe = pipe
        self.customizations = customizations
        self.method = method
        self._kind = type(customizations[0])  # the method's Customization class: its hooks
        self._base_loader = base_loader
        self._base_pipe = None

    @property
    def storage_bytes(self) -> int:
        """Bytes on disk of the loaded customization files (folders: every file in them)."""
        return sum(c.storage_bytes for c in self.customizations)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.customizations]

    @property
    def class_phrases(self) -> dict[str, str]:
        return {c.name: c.class_phrase for c in self.customizations}

    def _check_prompts(self, prompts: list[str]) -> None:
        for p in prompts:
            substitute(p, self.class_phrases)  # ValueError naming an unknown <name>

    # -- text ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, dict | None]:
        """Customised text conditioning of ``prompts``: (states (B, L, C), per-layer states or None)."""
        self._check_prompts(prompts)
        used = [c for c in self.customizations if any(c.name in find_placeholders(p) for p in prompts)]
        if len(used) <= 1:
            return (used or self.customizations)[0].encode(self.pipe, prompts)
        # Several composable concepts: substitute each one's phrase, then encode once.
        texts = [substitute(p, {c.name: c.phrase() for c in self.customizations})[0] for p in prompts]
        return encode_texts(self.pipe, texts), None

    def _kwargs(self, layers: dict | None):
        key = self.customizations[0].layer_states_key
        return None if layers is None else {key: layers}

    # -- noise prediction (metrics) ---------------------------------------------------------
    @torch.no_grad()
    def eps(self, z_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Customised eps: z_t (B, 4, h, w), t (B,), prompts (B) -> (B, 4, h, w)."""
        own = self._kind.eps(self, z_t, t, list(prompts))
        if own is not None:
            return own
        if family_of(self.pipe) == SDXL:  # plain text after substitution; pooled text and time ids as the pipeline
            phrases = {c.name: c.phrase() for c in self.customizations}
            return UNetEps.from_pipeline(self.pipe)(z_t, t, [substitute(p, phrases)[0] for p in prompts])
        states, layers = self.encode(list(prompts))
        unet = self.pipe.unet
        with self._rows(list(prompts)):
            return unet(z_t.to(unet.dtype), t, encoder_hidden_states=states.to(unet.dtype),
                        cross_attention_kwargs=self._kwargs(layers)).sample

    # -- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompts: str | list[str],
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 8.0,
        output_type: str = "pil",
        height: int | None = None,
        width: int | None = None,
        latents: torch.Tensor | None = None,
        return_base: bool = False,
    ) -> CustomizedOutput:
        """Generate one image per prompt; ``return_base`` adds the base model's images (same noise)."""
        prompts, negatives = prompt_lists(prompts, negative_prompt)
        common = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                      width=width, generator=generator, output_type=output_type)
        # SDXL tells "no negative prompt" (zero embeddings) from "" (encoded): keep the caller's None
        self._negatives_given = negative_prompt is not None
        own = self._kind.generate(self, prompts, self._negatives(negatives), latents, common, return_base)
        if own is not None:
            return CustomizedOutput(*own)
        self._check_prompts(prompts + negatives)
        start = generator_states(generator) if return_base else None  # before the customised images draw from it
        images = self._generate(self.pipe, prompts, negatives, latents, common)
        base = None
        if return_base:  # the same noise: the caller's generator(s) as they were when the customised images began
            base = self._base_images(prompts, negatives, latents, {**common, "generator": restore_generators(start)})
        return CustomizedOutput(images, base)

    def _negatives(self, negatives: list[str]) -> list[str] | None:
        return negatives if getattr(self, "_negatives_given", True) else None

    def _generate(self, pipe, prompts, negatives, latents, common):
        if latents is not None and isinstance(common["generator"], list):
            common = {**common, "generator": None}  # explicit latents: no noise is drawn
        if family_of(pipe) == SDXL:  # the methods ported to SDXL are plain text after substitution
            phrases = {c.name: c.phrase() for c in self.customizations}
            neg = self._negatives([substitute(p, phrases)[0] for p in negatives])
            return pipe(prompt=[substitute(p, phrases)[0] for p in prompts], negative_prompt=neg, latents=latents,
                        **common).images
        pos, pos_layers = self.encode(prompts)
        neg, neg_layers = self.encode(negatives)
        layers = None
        cfg = common["guidance_scale"] > 1.0
        if pos_layers is not None:
            layers = {k: torch.cat([neg_layers[k], v]) if cfg else v for k, v in pos_layers.items()}
        with self._rows((negatives if cfg else []) + prompts):  # the pipeline's rows: [negatives, prompts] with CFG
            return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, cross_attention_kwargs=self._kwargs(layers),
                        latents=latents, **common).images

    def _rows(self, prompts: list[str]) -> ExitStack:
        """Each loader's ``concept_rows`` context for a UNet batch of ``prompts`` (one row each)."""
        names = set(self.names)
        flags = [any(n in names for n in find_placeholders(p)) for p in prompts]
        stack = ExitStack()
        for c in self.customizations:
            stack.enter_context(c.concept_rows(flags))
        return stack

    def _base_images(self, prompts, negatives, latents, common):
        phrases = self.class_phrases
        pos = [substitute(p, phrases)[0] for p in prompts]
        neg = [substitute(p, phrases)[0] for p in negatives]
        if latents is not None and isinstance(common["generator"], list):
            common = {**common, "generator": None}  # explicit latents: no noise is drawn (as ``_generate``)
        if any(c.owns_pipeline for c in self.customizations):
            if self._base_pipe is None:
                if self._base_loader is None:
                    raise ValueError("base images need the base model: pass load_customized(model=<base model>)")
                self._base_pipe = self._base_loader()
            pipe, contexts = self._base_pipe, []
        else:
            pipe, contexts = self.pipe, [c.disabled(self.pipe) for c in self.customizations]
        with ExitStack() as stack:
            for ctx in contexts:
                stack.enter_context(ctx)
            return pipe(prompt=pos, negative_prompt=self._negatives(neg), latents=latents, **common).images


def generator_states(generator):
    """What ``restore_generators`` needs to rebuild ``generator`` (one ``torch.Generator``, a list of them, or None)
    in its current state."""
    if generator is None:
        return None
    gens = generator if isinstance(generator, list) else [generator]
    return isinstance(generator, list), [(g.device, g.get_state()) for g in gens]


def restore_generators(states):
    """Fresh generators in the states ``generator_states`` recorded, in the caller's form (one, or a list)."""
    if states is None:
        return None
    is_list, saved = states
    gens = []
    for device, state in saved:
        g = torch.Generator(device)
        g.set_state(state)
        gens.append(g)
    return gens if is_list else gens[0]


def load_customized(model, files: Sequence[str | os.PathLike], model_config: str | None = None) -> CustomizedModel:
    """A generator for the customization(s) in ``files`` on base ``model``.

    model: a base model id/path/'tiny'/'world' (loaded here) or a loaded ``StableDiffusionPipeline``
    (customizations are attached to it in place). files: outputs of ``infusion train``, all of one
    method; several at once only for methods whose loader composes (``Customization.composable``).
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("load_customized needs at least one customization file")
    metas = [read_metadata(f) for f in files]
    methods = {m.get("method") for m in metas}
    if len(methods) != 1:
        raise ValueError(f"all files must be of one method, got {sorted(map(str, methods))}")
    method = methods.pop()
    names = [m.get("name") for m in metas]
    if len(set(names)) != len(names):
        raise ValueError(f"two files define the same concept name: {names}")

    if not method:
        raise ValueError(f"{files[0]}: no 'method' in its metadata; is it a file written by `infusion train`?")
    kind = customization_class(method, files[0])

    def base_loader(pipeline_cls=None):
        return load_base_pipeline(model, pipeline_cls, config=model_config) if isinstance(model, str) else model

    pipe, custom = kind.load_all(files, metas, base_loader)
    return CustomizedModel(pipe, custom, method, base_loader)
