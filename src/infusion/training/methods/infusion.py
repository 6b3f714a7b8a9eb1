"""Infusion (paper Section 4.2): train only a residual on the concept token's value in every
``attn2``; the C stream reuses F's maps, so each step is an F forward (no grad) that records
F's attention outputs and maps, then a C forward that injects the Deltas (Eq. 7, Eq. 8)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...concept import Concept
from ...processor import InfusionPlan, install_processors, layer_widths
from ...prompts import parse_prompt, phrase_token_count
from .base import Method, TextBatch, register_method, param_key



@register_method
class InfusionMethod(Method):
    name = "infusion"
    default_lr = 1e-2  # paper 5.1: AdamW, lr 0.01, batch 4
    out_help = "an Infusion concept .safetensors file (one Delta per attn2 layer)"

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        n_tokens = phrase_token_count(cfg.class_phrase, pipe.tokenizer)
        self.layers = layer_widths(self.unet)  # layer name -> D
        # Zero init: at step 0 C == F exactly.
        self.deltas = nn.ParameterDict(
            {param_key(n): nn.Parameter(torch.zeros(n_tokens, d, device=self.unet.device)) for n, d in self.layers.items()}
        )
        for layer, proc in install_processors(self.unet).items():
            proc.deltas = {cfg.name: self.deltas[param_key(layer)]}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.deltas.items()}

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
        concept = Concept(
            name=self.cfg.name,
            class_phrase=self.cfg.class_phrase,
            deltas={n: self.deltas[param_key(n)].detach().float().cpu() for n in self.layers},
            base_model=str(self.cfg.model),
            base_fingerprint=fingerprint,
            method=self.name,
            training=self.cfg.to_dict(),
        )
        concept.save(Path(path))
        return concept
