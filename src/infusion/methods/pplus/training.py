"""P+ / Extended Textual Inversion (Voynov et al. 2023): one learned token embedding per
cross-attention layer. The text encoder runs once per layer with that layer's embedding in
place of ``<name>``, and each ``attn2`` reads its own text states (``LayerStatesProcessor``).

Defaults: Textual Inversion's recipe (lr 5e-4 x batch size, init from the class phrase's
embedding, weight decay 1e-2), for every layer's token.

File (``--out x.safetensors``, our format ``infusion-pplus``): one tensor per ``attn2`` layer keyed
by its diffusers module name, shape [1, H] (H: the text encoder's input width), fp32, metadata as
Infusion concept files. ``PPlusCustomization`` loads it for generation.
"""

from __future__ import annotations

import torch
from torch import nn

from infusion.core.customization_files import customization_metadata
from infusion.core.safetensors_io import save_safetensors_atomic
from infusion.core.tokens import STAND_IN, phrase_embedding, stand_in_embed_fn
from infusion.methods.base import Method, MLMTextSide, TextBatch
from infusion.methods.pplus.loader import FORMAT, KWARG, PPlusCustomization, encode_per_layer, install_layer_states  # noqa: F401


class PPlus(Method):
    name = "pplus"
    default_lr = 5e-4  # TI's recipe, x batch size
    scale_lr = True
    weight_decay = 1e-2
    cache_text = False
    out_help = "a .safetensors file (format infusion-pplus): one [1, H] token per attn2 layer"
    method_args_help = {}

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.layers = install_layer_states(self.unet)
        init = phrase_embedding(pipe.text_encoder, pipe.tokenizer, cfg.class_phrase)  # (H,)
        self.tokens = nn.Parameter(init[None].repeat(len(self.layers), 1))  # (n_layers, H)

    mlm_batch_size = 12  # the MLM paper's authors' P+ runs

    def mlm_text_side(self) -> MLMTextSide:
        """L_MLM once per per-layer token, on the same prompts and mask, averaged: as the MLM paper's authors do
        (``other-ones/personal_rc``, ``pplus/pplus_train_clean.py`` L656-676: each caption encoded with each layer's
        token, one cross-entropy mean over all), so every layer's token is regularised, not only their mean. The
        concept is written as the token alone."""
        fns = [stand_in_embed_fn(self.text_encoder, self.tokenizer, (lambda j=j: self.tokens[j])) for j in range(len(self.layers))]
        return MLMTextSide(STAND_IN, self.text_encoder, fns[0], embed_fns=fns)

    def encode_captions(self, captions: list[str]) -> TextBatch:
        """-> TextBatch whose states are per layer: (B, n_layers, L, C)."""
        states = encode_per_layer(self.text_encoder, self.tokenizer, captions, self.cfg.name, self.tokens)
        return TextBatch(states, [[] for _ in captions])

    def forward(self, noisy_latents, timesteps, text: TextBatch):
        """noisy_latents (B, 4, h, w), timesteps (B,), text states (B, n_layers, L, C) -> eps (B, 4, h, w)."""
        layer_states = {k: text.states[:, j] for j, k in enumerate(self.layers)}
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text.states[:, 0],
                         cross_attention_kwargs={KWARG: layer_states}).sample

    def export(self, path, fingerprint: str) -> dict[str, torch.Tensor]:
        tensors = {k: self.tokens[j].detach().float().cpu()[None] for j, k in enumerate(self.layers)}  # [1, H] each
        if not all(torch.isfinite(v).all() for v in tensors.values()):
            raise ValueError("refusing to save: a P+ token is not finite (NaN/inf)")
        save_safetensors_atomic(tensors, path, customization_metadata(self.cfg, self.name, FORMAT, fingerprint))
        return tensors
