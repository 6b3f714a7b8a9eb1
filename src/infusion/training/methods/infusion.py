"""Infusion (paper Section 4.2): train only a residual on the concept token's value in every
``attn2``; the C stream reuses F's maps, so each step is an F forward (no grad) that records
F's attention outputs and maps, then a C forward that injects the Deltas (Eq. 7, Eq. 8).

``--method-arg residual=query`` trains the query variant (``processor`` module docstring): per
layer also ``A`` (D, r) and ``B`` (r, D) so the value residual can differ across the object;
``query_rank`` r (default 4). ``A`` starts as LoRA's down projection does (Kaiming-uniform), ``B``
at zero, so at step 0 C == F exactly in both variants.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ...concept import Concept
from ...processor import InfusionPlan, install_processors, layer_widths
from ...prompts import parse_prompt, phrase_token_count
from .base import Method, TextBatch, register_method, param_key

RESIDUALS = ("value", "query")


@register_method
class InfusionMethod(Method):
    name = "infusion"
    default_lr = 1e-2  # paper 5.1: AdamW, lr 0.01, batch 4
    out_help = "an Infusion concept .safetensors file (one Delta per attn2 layer)"
    method_args_help = {
        "residual": "value (the paper's constant Delta per layer, default) | query (Delta + a per-pixel term of F's query)",
        "query_rank": "rank r of the query term (default 4)",
        "t_max": "inject only at timesteps t < t_max * T, in training and generation (default 1.0: every step, the paper's)",
    }

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        n_tokens = phrase_token_count(cfg.class_phrase, pipe.tokenizer)
        self.layers = layer_widths(self.unet)  # layer name -> D
        self.residual = str(cfg.method_args.get("residual", "value"))
        if self.residual not in RESIDUALS:
            raise ValueError(f"--method-arg residual={self.residual!r}: use one of {', '.join(RESIDUALS)}")
        self.t_max = float(cfg.method_args.get("t_max", 1.0))
        if not 0 < self.t_max <= 1:
            raise ValueError(f"--method-arg t_max must be in (0, 1], got {self.t_max}")
        dev = self.unet.device
        # Zero init: at step 0 C == F exactly.
        self.deltas = nn.ParameterDict(
            {param_key(n): nn.Parameter(torch.zeros(n_tokens, d, device=dev)) for n, d in self.layers.items()}
        )
        self.query_a = nn.ParameterDict()
        self.query_b = nn.ParameterDict()
        if self.residual == "query":
            r = int(cfg.method_args.get("query_rank", 4))
            if r < 1:
                raise ValueError(f"--method-arg query_rank must be >= 1, got {r}")
            g = torch.Generator().manual_seed(cfg.seed)
            for n, d in self.layers.items():
                bound = 1.0 / math.sqrt(d)  # nn.init.kaiming_uniform_(a=sqrt(5)) on a (r, d) weight, as LoRA's A
                a = (torch.rand(n_tokens, d, r, generator=g) * 2 - 1) * bound
                self.query_a[param_key(n)] = nn.Parameter(a.to(dev))
                self.query_b[param_key(n)] = nn.Parameter(torch.zeros(n_tokens, r, d, device=dev))
        for layer, proc in install_processors(self.unet).items():
            k = param_key(layer)
            proc.deltas = {cfg.name: self.deltas[k]}
            proc.query_terms = {cfg.name: (self.query_a[k], self.query_b[k])} if self.residual == "query" else {}

    def max_train_timestep(self, num_train_timesteps: int) -> int:
        return max(1, int(round(self.t_max * num_train_timesteps)))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {n: p for n, p in self.deltas.items()}
        state.update({f"query_a.{n}": p for n, p in self.query_a.items()})
        state.update({f"query_b.{n}": p for n, p in self.query_b.items()})
        return state

    @torch.no_grad()
    def encode_captions(self, captions: list[str]) -> TextBatch:
        parsed = [parse_prompt(c, {self.cfg.name: self.cfg.class_phrase}, self.tokenizer) for c in captions]
        ids = self.tokenizer(
            [p.text for p in parsed], padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        states = self.text_encoder(ids)[0]  # (B, L, C): last hidden state, as SD uses it
        return TextBatch(states, [p.spans for p in parsed], ids)

    def forward(self, noisy_latents, timesteps, text: TextBatch):
        """noisy_latents (B, 4, h, w), timesteps (B,) -> eps_C (B, 4, h, w)."""
        B = noisy_latents.shape[0]
        plan = InfusionPlan.build("record", B, list(range(B)), text.spans)
        with torch.no_grad():  # F: frozen base model, stores no activations
            self.unet(noisy_latents, timesteps, encoder_hidden_states=text.states,
                      cross_attention_kwargs={"infusion": plan})
        plan.mode = "inject"  # C: F's maps and outputs + Deltas
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text.states,
                         cross_attention_kwargs={"infusion": plan}).sample

    def export(self, path, fingerprint: str) -> Concept:
        cpu = lambda p: p.detach().float().cpu()  # noqa: E731
        concept = Concept(
            name=self.cfg.name,
            class_phrase=self.cfg.class_phrase,
            deltas={n: cpu(self.deltas[param_key(n)]) for n in self.layers},
            base_model=str(self.cfg.model),
            base_fingerprint=fingerprint,
            method=self.name,
            training=self.cfg.to_dict(),
            query={n: (cpu(self.query_a[param_key(n)]), cpu(self.query_b[param_key(n)])) for n in self.layers}
            if self.residual == "query" else {},
            t_max=self.t_max,
        )
        concept.save(Path(path))
        return concept
