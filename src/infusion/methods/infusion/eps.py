"""eps of the Infusion customised model (the C stream), for metrics such as the latent Fisher divergence."""

from __future__ import annotations

from typing import Iterable

import torch

from infusion.core.placeholders import parse_prompt
from infusion.core.unet_eps import TextEncoderCache, unet_kwargs
from infusion.methods.infusion.processor import InfusionPlan, install_processors


class InfusionEps:
    """eps of the Infusion customised model (the C stream) with ``concepts`` loaded.

    For a prompt that names no concept the customised model *is* the F stream, i.e. the base UNet
    with diffusers' own SDPA attention: its eps is bit-identical to the base model's and so the
    latent Fisher divergence on non-customised concepts is exactly 0 (Sec. 4, Fig. 3a). Prompts
    that write ``<name>`` get C rows derived from F rows in one fused UNet call (DESIGN section 1).
    A concept with ``t_max`` < 1 injects only in rows whose t < t_max * T, as ``InfusionPipeline`` samples it
    (``num_train_timesteps`` T: the pipeline's scheduler's).
    """

    def __init__(self, unet, text_encoder, tokenizer, concepts: Iterable, text_encoder_2=None, tokenizer_2=None,
                 vae_scale_factor: int = 8, num_train_timesteps: int = 1000):
        self.unet, self.tokenizer = unet, tokenizer
        self.num_train_timesteps = num_train_timesteps
        self.t_max: dict[str, float] = {}
        self.encode = TextEncoderCache(text_encoder, tokenizer, text_encoder_2, tokenizer_2)
        self.vae_scale_factor = vae_scale_factor
        self.class_phrases: dict[str, str] = {}
        procs = install_processors(unet)
        for concept in concepts:
            missing = sorted(set(procs) - set(concept.deltas))
            extra = sorted(set(concept.deltas) - set(procs))
            if missing or extra:
                raise ValueError(
                    f"concept <{concept.name}> does not fit this UNet: missing layers {missing[:3]}, unknown layers {extra[:3]}"
                )
            for layer, proc in procs.items():
                proc.deltas[concept.name] = concept.deltas[layer]
                if concept.query:
                    proc.query_terms[concept.name] = concept.query[layer]
                if concept.maps == "own":
                    proc.own_maps.add(concept.name)
            self.class_phrases[concept.name] = concept.class_phrase
            self.t_max[concept.name] = float(concept.t_max)

    @classmethod
    def from_pipeline(cls, pipe, concepts: Iterable) -> "InfusionEps":
        """From an ``InfusionPipeline`` (or any pipeline with unet/text_encoder/tokenizer)."""
        sched = getattr(pipe, "scheduler", None)
        T = int(sched.config.num_train_timesteps) if sched is not None else 1000
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, concepts, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "tokenizer_2", None), getattr(pipe, "vae_scale_factor", 8), T)

    @torch.no_grad()
    def __call__(self, z_t, t, prompts):
        parsed = [parse_prompt(p, self.class_phrases, self.tokenizer) for p in prompts]
        T = self.num_train_timesteps
        live = [[sp for sp in p.spans if float(t[i]) < self.t_max[sp.name] * T] for i, p in enumerate(parsed)]
        c_rows = [i for i, spans in enumerate(live) if spans]  # a row whose concepts are all off at its t is F
        plan = InfusionPlan.build("fused", len(parsed), c_rows, [live[i] for i in c_rows])
        texts = [p.text for p in parsed]
        idx = torch.tensor(c_rows, dtype=torch.long, device=z_t.device)
        rows = texts + [texts[i] for i in c_rows]  # rows [F (B), C (n_c)]: C shares its F row's text conditioning
        zz = torch.cat([z_t, z_t[idx]])
        out = self.unet(zz, torch.cat([t, t[idx]]), cross_attention_kwargs={"infusion": plan},
                        **unet_kwargs(self.encode, rows, zz, self.vae_scale_factor)).sample
        eps = out[: len(parsed)].clone()  # F rows
        eps[idx] = out[len(parsed) :]  # C rows replace their prompts' F rows
        return eps
