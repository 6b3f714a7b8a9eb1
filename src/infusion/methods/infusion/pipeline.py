"""InfusionPipeline (SD 1.x/2.x) and InfusionXLPipeline (SDXL): base and customised images from one
UNet call per step (DESIGN section 1).

Rows of every UNet call: ``[F_uncond, F_cond, C_uncond, C_cond]`` (each ``B`` rows). F is the
base model; C rows take F's cross-attention maps and add their concepts' Deltas. Both streams
start from the same noise, so ``.base_images`` (F) and ``.images`` (C) differ only by the
concept. A call whose prompts name no concept runs the stock pipeline's code path, unchanged.
On SDXL the C rows share F's pooled text embeddings and micro-conditioning ids (their text is the
same), as made by the stock ``encode_prompt`` and ``_get_add_time_ids``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.utils import BaseOutput

import infusion.core.base_models  # noqa: F401  (quiets diffusers' empty float32-modules warning on from_pipe)
from infusion.core.model_families import SDXL, family_of, family_of_files, fingerprint_modules
from infusion.core.placeholders import ParsedPrompt, parse_prompt, prompt_lists
from infusion.methods.infusion.concept import Concept, base_fingerprint
from infusion.methods.infusion.processor import InfusionPlan, infusion_processors, install_processors


@dataclass
class InfusionPipelineOutput(BaseOutput):
    """images: customised (C stream); base_images: the base model's (F stream), same noise."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    base_images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    nsfw_content_detected: list[bool] | None = None
    attention: dict | None = None  # return_attention: concept -> {(h, w): (B, h, w)} (see InfusionMixin.__call__)


class InfusionMixin:
    """Concepts, prompts and the two-stream loop, shared by the SD and SDXL pipelines; the family's text
    encoding, extra UNet conditioning and decoding are the subclasses' ``_encode_rows`` and ``_decode``."""

    _concepts: dict[str, Concept]

    # -- concepts ---------------------------------------------------------------------------
    def _ensure_state(self):
        if not hasattr(self, "_concepts") or self._concepts is None:
            self._concepts = {}
            self._checked: set[int] = set()
            self._fingerprint: str | None = None

    def base_fingerprint(self) -> str:
        """Fingerprint of this pipeline's UNet and text encoder (see ``concept.base_fingerprint``)."""
        self._ensure_state()
        if self._fingerprint is None:
            self._fingerprint = base_fingerprint(*fingerprint_modules(self))
        return self._fingerprint

    def load_concept(self, concept: Concept | str | os.PathLike) -> Concept:
        """Load (path) or attach (Concept) a concept so that prompts can say ``<name>``."""
        self._ensure_state()
        if not isinstance(concept, Concept):
            concept = Concept.load(concept)
        if concept.method != "infusion":
            raise ValueError(
                f"concept <{concept.name}> was trained with method {concept.method!r}; "
                "load it with infusion.methods (infusion generate does this for you)"
            )
        if id(concept) not in self._checked:
            concept.check_compatible(self.unet, self.base_fingerprint(), family_of(self))
            self._checked.add(id(concept))
        self._concepts[concept.name] = concept
        return concept

    def unload_concepts(self) -> None:
        self._ensure_state()
        self._concepts.clear()
        for proc in infusion_processors(self.unet).values():
            proc.deltas = {}
            proc.query_terms = {}
            proc.own_maps = set()

    @property
    def concepts(self) -> dict[str, Concept]:
        self._ensure_state()
        return dict(self._concepts)

    def _use_concepts(self, extra: Sequence[Concept | str | os.PathLike] | None) -> dict[str, Concept]:
        """Loaded concepts plus this call's ``concepts=`` (which are loaded too, replacing same names)."""
        self._ensure_state()
        seen: set[str] = set()
        for c in extra or []:
            c = self.load_concept(c)
            if c.name in seen:
                raise ValueError(f"two concepts are named <{c.name}>; names must be unique in one call")
            seen.add(c.name)
        return dict(self._concepts)

    def _set_deltas(self, concepts: dict[str, Concept]) -> None:
        procs = install_processors(self.unet)
        dtype, device = self.unet.dtype, self.unet.device
        for layer, proc in procs.items():
            proc.deltas = {n: c.deltas[layer].to(device=device, dtype=dtype) for n, c in concepts.items()}
            proc.query_terms = {n: tuple(t.to(device=device, dtype=dtype) for t in c.query[layer])
                                for n, c in concepts.items() if c.query}
            proc.own_maps = {n for n, c in concepts.items() if c.maps == "own"}

    # -- prompts ----------------------------------------------------------------------------
    def parse(self, prompts: list[str], concepts: dict[str, Concept]) -> list[ParsedPrompt]:
        """Substitute placeholders; check each concept occupies as many tokens as its Delta has rows."""
        phrases = {n: c.class_phrase for n, c in concepts.items()}
        parsed = [parse_prompt(p, phrases, self.tokenizer) for p in prompts]
        second = getattr(self, "tokenizer_2", None)
        for pp in parsed if second is not None else []:  # SDXL: the residual's positions must hold in both sequences
            other = parse_prompt(pp.source, phrases, second)
            if [s.positions for s in other.spans] != [s.positions for s in pp.spans]:
                raise ValueError(f"the two tokenizers place the concepts of {pp.text!r} at different positions "
                                 f"({[s.positions for s in pp.spans]} vs {[s.positions for s in other.spans]})")
        for pp in parsed:
            for span in pp.spans:
                want = concepts[span.name].n_tokens
                if len(span.positions) != want:
                    raise ValueError(
                        f"<{span.name}> tokenizes to {len(span.positions)} tokens in {pp.text!r} but its Delta "
                        f"has {want} rows (class phrase {concepts[span.name].class_phrase!r}); "
                        "put spaces around the placeholder"
                    )
        return parsed

    # -- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        concepts: Sequence[Concept | str | os.PathLike] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 8.0,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_base: bool = True,
        return_dict: bool = True,
        return_attention: bool = False,
    ):
        """Generate. Defaults follow the paper: DDIM 50 steps, guidance 8.

        Returns ``InfusionPipelineOutput`` (``.images`` customised, ``.base_images`` from F when
        ``return_base``) or, with ``return_dict=False``, ``(images, base_images)``. ``return_attention``: also
        ``.attention[name][(h, w)]`` (B, h, w), the base model's cross-attention map of each concept's tokens (where
        its residual lands), averaged over heads, denoising steps, the ``attn2`` layers of that resolution and
        the concept's tokens, one map per conditional row (zeros where a prompt does not name the concept).
        """
        active = self._use_concepts(concepts)
        prompts, negatives = prompt_lists(prompt, negative_prompt)
        pos = self.parse(prompts, active)
        neg = self.parse(negatives, active)
        common = dict(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt,
            height=height,
            width=width,
            eta=eta,
            generator=generator,
            latents=latents,
            output_type=output_type,
        )
        if not any(p.spans for p in pos + neg):
            # No concept referenced: exactly the base pipeline (concept-agnostic overfitting is zero).
            out = super().__call__(
                prompt=[p.text for p in pos], negative_prompt=self._stock_negatives(neg, negative_prompt),
                return_dict=True, **common
            )
            base = out.images if return_base else None
            return InfusionPipelineOutput(out.images, base, None, {} if return_attention else None) \
                if return_dict else (out.images, base)

        self._set_deltas(active)
        self._map_sink = {} if return_attention else None
        images, base = self._generate(pos, neg, negative_prompt is not None, **common)
        base = base if return_base else None
        attention = self._attention_maps(pos, num_images_per_prompt, height, width) if return_attention else None
        return InfusionPipelineOutput(images, base, None, attention) if return_dict else (images, base)

    def _attention_maps(self, pos, n, height, width) -> dict:
        """Sums in ``self._map_sink`` -> concept -> {(h, w): (B*n, h, w)} over the conditional C rows."""
        sink, steps = self._map_sink, max(self._map_steps, 1)
        plan = self._map_plan
        rows = plan.active.tolist()
        n_neg = plan.n_c - len(pos) * n  # C rows before the conditional ones: the negatives' (with CFG)
        H = (height or self.unet.config.sample_size * self.vae_scale_factor) // self.vae_scale_factor
        W = (width or self.unet.config.sample_size * self.vae_scale_factor) // self.vae_scale_factor
        grouped: dict = {}
        for layer, total in sink.items():  # (n_a, N, T)
            N = total.shape[1]
            scale = round((H * W / N) ** 0.5)
            grouped.setdefault((H // scale, W // scale), []).append(total / steps)
        out: dict = {}
        for (h, w), maps in grouped.items():
            mean = torch.stack(maps).mean(0)  # (n_a, N, T)
            for a, row in enumerate(rows):
                if row < n_neg:
                    continue
                for name in {s[0] for s in plan.slots[row] if s is not None}:
                    cols = [j for j, s in enumerate(plan.slots[row]) if s is not None and s[0] == name]
                    m = out.setdefault(name, {}).setdefault((h, w), torch.zeros(len(pos) * n, h, w))
                    m[row - n_neg] = mean[a, :, cols].mean(-1).view(h, w).cpu()
        return out

    def _stock_negatives(self, neg: list[ParsedPrompt], given) -> list[str] | None:
        """Negative prompts for the stock pipeline's call (SDXL tells "none given" from "": zeros vs. encoded "")."""
        return [p.text for p in neg]

    def _generate(self, pos, neg, negatives_given, num_inference_steps, guidance_scale, num_images_per_prompt, height,
                  width, eta, generator, latents, output_type):
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self._check_size(pos, neg, height, width)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device
        cfg = guidance_scale > 1.0
        n = num_images_per_prompt
        text, unet_kwargs = self._encode_rows(pos, neg, negatives_given, device, n, cfg, height, width)
        # text (R, L, C): [F_uncond, F_cond, C_uncond, C_cond]; unet_kwargs: the family's other UNet kwargs, same rows
        spans = ([neg_p.spans for neg_p in neg for _ in range(n)] if cfg else []) + [
            p.spans for p in pos for _ in range(n)
        ]
        n_f = text.shape[0] // 2
        plan = InfusionPlan.build("fused", n_f, list(range(n_f)), spans)
        concepts = self._concepts
        limits = sorted({c.t_max for n, c in concepts.items() if c.t_max < 1.0})
        T = self.scheduler.config.num_train_timesteps
        plans = {}  # concepts with t_max inject only below t_max * T: the plan of each set of live concepts

        def plan_at(t) -> InfusionPlan:
            if not limits:
                return plan
            live = frozenset(n for n, c in concepts.items() if float(t) < c.t_max * T)
            if live not in plans:
                plans[live] = InfusionPlan.build("fused", n_f, list(range(n_f)),
                                                 [[sp for sp in row if sp.name in live] for row in spans])
            return plans[live]

        sink = getattr(self, "_map_sink", None)
        if sink is not None:
            plan.map_sink, self._map_plan, self._map_steps = sink, plan, 0
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device)
        bn = len(pos) * n
        z = self.prepare_latents(bn, self.unet.config.in_channels, height, width, text.dtype, device, generator, latents)
        z = torch.cat([z, z])  # (2*B*n, 4, h, w): [F, C], same starting noise
        extra = self.prepare_extra_step_kwargs(generator, eta)
        reps = 2 if cfg else 1
        with self.progress_bar(total=len(timesteps)) as bar:
            for t in timesteps:
                zf, zc = z.chunk(2)
                x = torch.cat([zf] * reps + [zc] * reps)  # (R, 4, h, w)
                x = self.scheduler.scale_model_input(x, t)
                step_plan = plan_at(t)
                if sink is not None:  # steps where a t_max concept is off run another plan: not recorded
                    plan.map_sink = sink if step_plan is plan else None
                    self._map_steps += step_plan is plan
                eps = self.unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"infusion": step_plan},
                                return_dict=False, **unet_kwargs)[0]
                if cfg:
                    fu, fc, cu, cc = eps.chunk(4)
                    eps = torch.cat([fu + guidance_scale * (fc - fu), cu + guidance_scale * (cc - cu)])
                z = self.scheduler.step(eps, t, z, **extra, return_dict=False)[0]
                bar.update()
        zf, zc = z.chunk(2)
        return self._decode(zc, generator, output_type), self._decode(zf, generator, output_type)


class InfusionPipeline(InfusionMixin, StableDiffusionPipeline):
    """A ``StableDiffusionPipeline`` (SD 1.x/2.x) that also generates Infusion concepts.

    >>> pipe = InfusionPipeline.from_pretrained("path/to/sd")  # or .from_pipe(sd_pipe); SDXL -> InfusionXLPipeline
    >>> out = pipe("a photo of <mycat> on the beach", concepts=["mycat.safetensors"])
    >>> out.images, out.base_images
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Loads an SDXL folder as an ``InfusionXLPipeline`` (the family is read from ``model_index.json``)."""
        if cls is InfusionPipeline and family_of_files(pretrained_model_name_or_path) == SDXL:
            return InfusionXLPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """An SDXL pipeline gives an ``InfusionXLPipeline`` (same modules, no copy)."""
        if cls is InfusionPipeline and family_of(pipeline) == SDXL:
            return InfusionXLPipeline.from_pipe(pipeline, **kwargs)
        return super().from_pipe(pipeline, **kwargs)

    def _check_size(self, pos, neg, height, width):
        self.check_inputs([p.text for p in pos], height, width, None, [p.text for p in neg])

    def _encode_rows(self, pos, neg, negatives_given, device, n, cfg, height, width):
        cond, uncond = self.encode_prompt(
            [p.text for p in pos], device, n, cfg, [p.text for p in neg]
        )  # (B*n, L, C) each; uncond None without CFG
        return torch.cat(([uncond, cond] if cfg else [cond]) * 2), {}

    def _decode(self, z, generator, output_type):
        if output_type == "latent":
            return z
        image = self.vae.decode(z / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        return self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * image.shape[0])


class InfusionXLPipeline(InfusionMixin, StableDiffusionXLPipeline):
    """A ``StableDiffusionXLPipeline`` that also generates Infusion concepts (same interface as ``InfusionPipeline``).

    Placeholders are substituted in the prompt both text encoders read (``prompt_2`` is the prompt, as the stock
    pipeline does when none is given); SDXL's defaults apply: no negative prompt means zero negative embeddings
    (``force_zeros_for_empty_prompt``), original and target size = (height, width), crop (0, 0).
    """

    def _stock_negatives(self, neg, given):
        return None if given is None else [p.text for p in neg]

    def _check_size(self, pos, neg, height, width):
        self.check_inputs([p.text for p in pos], None, height, width, None, [p.text for p in neg])

    def _encode_rows(self, pos, neg, negatives_given, device, n, cfg, height, width):
        cond, uncond, pooled, uncond_pooled = self.encode_prompt(
            [p.text for p in pos], None, device, n, cfg, [p.text for p in neg] if negatives_given else None
        )  # (B*n, L, C), (B*n, L, C) | None, (B*n, P), (B*n, P) | None
        proj = int(pooled.shape[-1]) if self.text_encoder_2 is None else self.text_encoder_2.config.projection_dim
        ids = self._get_add_time_ids((height, width), (0, 0), (height, width), dtype=cond.dtype,
                                     text_encoder_projection_dim=proj).to(device)  # (1, 6)
        text = torch.cat(([uncond, cond] if cfg else [cond]) * 2)  # (R, L, C)
        pooled = torch.cat(([uncond_pooled, pooled] if cfg else [pooled]) * 2)  # (R, P)
        return text, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids.repeat(len(text), 1)}}

    def _decode(self, z, generator, output_type):
        """As the stock SDXL pipeline: fp16 VAEs that ask for it decode in fp32; latents_mean/std when configured."""
        if output_type == "latent":
            return z
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
            z = z.to(torch.float32)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(z.device, z.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(z.device, z.dtype)
            z = z * std / vae.config.scaling_factor + mean
        else:
            z = z / vae.config.scaling_factor
        image = vae.decode(z, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)


InfusionPipeline.sdxl_class = InfusionXLPipeline  # what ``load_base_pipeline`` builds for an SDXL checkpoint
