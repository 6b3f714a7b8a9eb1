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
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ...customized import Customization
from ...io import read_safetensors, save_safetensors_atomic
from ...processor import cross_attention_layers
from .base import Method, MLMTextSide, TextBatch, register_method
from .files import customization_metadata
from .tokens import STAND_IN, encode_with_token, phrase_embedding, stand_in_embed_fn

FORMAT = "infusion-pplus"
KWARG = "layer_states"


class LayerStatesProcessor(AttnProcessor2_0):
    """diffusers' SDPA attention; on ``attn2`` it reads ``layer_states[its layer]`` (B, L, C) as the
    text states when given (``cross_attention_kwargs={"layer_states": {...}}``)."""

    def __init__(self, layer: str | None = None):
        super().__init__()
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 layer_states=None):
        if layer_states is not None and self.layer is not None:
            encoder_hidden_states = layer_states[self.layer]
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_layer_states(unet) -> list[str]:
    """Put ``LayerStatesProcessor`` on every attention layer; returns the attn2 layer names, in order."""
    layers = list(cross_attention_layers(unet))
    unet.set_attn_processor({
        k: LayerStatesProcessor(k[: -len(".processor")] if k[: -len(".processor")] in layers else None)
        for k in unet.attn_processors
    })
    return layers


def encode_per_layer(text_encoder, tokenizer, prompts: list[str], name: str, tokens: torch.Tensor) -> torch.Tensor:
    """prompts (B) with ``<name>``, tokens (n_layers, H) -> states (B, n_layers, L, C)."""
    n, B = tokens.shape[0], len(prompts)
    rows = [p for p in prompts for _ in range(n)]  # (B * n): prompt-major
    vectors = tokens.repeat(B, 1)  # (B * n, H): row b*n + j carries layer j's token
    states, _, _ = encode_with_token(text_encoder, tokenizer, rows, name, vectors)  # (B * n, L, C)
    return states.view(B, n, *states.shape[1:])


class PPlusCustomization(Customization):
    """Per-layer tokens; ``<name>`` is carried by each layer's own embedding."""

    method = "pplus"
    layer_states_key = KWARG

    def attach(self, pipe):
        tensors, _ = read_safetensors(self.path, "P+ file")
        self.layers = install_layer_states(pipe.unet)
        missing, extra = sorted(set(self.layers) - set(tensors)), sorted(set(tensors) - set(self.layers))
        if missing or extra:
            raise ValueError(f"P+ file {self.path} does not fit this UNet: layers missing {missing[:3]}, "
                             f"unknown {extra[:3]} (trained on {self.meta.get('base_model')})")
        width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
        self.tokens = torch.cat([tensors[k] for k in self.layers])  # (n_layers, H)
        if self.tokens.shape[1] != width:
            raise ValueError(f"P+ file {self.path} has token width {self.tokens.shape[1]}, this text encoder {width}")
        return pipe

    def encode(self, pipe, prompts):
        from ...prompts import find_placeholders

        if not any(find_placeholders(p) for p in prompts):  # no concept: the same states for every layer
            from ...customized import encode_texts

            states = encode_texts(pipe, prompts)
            return states, {k: states for k in self.layers}
        tokens = self.tokens.to(pipe.text_encoder.device, pipe.text_encoder.dtype)
        states = encode_per_layer(pipe.text_encoder, pipe.tokenizer, prompts, self.name, tokens)  # (B, n, L, C)
        return states[:, 0], {k: states[:, j] for j, k in enumerate(self.layers)}


@register_method
class PPlus(Method):
    name = "pplus"
    default_lr = 5e-4  # TI's recipe, x batch size
    weight_decay = 1e-2
    cache_text = False
    out_help = "a .safetensors file (format infusion-pplus): one [1, H] token per attn2 layer"
    customization_cls = PPlusCustomization
    method_args_help = {}

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.layers = install_layer_states(self.unet)
        init = phrase_embedding(pipe.text_encoder, pipe.tokenizer, cfg.class_phrase)  # (H,)
        self.tokens = nn.Parameter(init[None].repeat(len(self.layers), 1))  # (n_layers, H)

    def learning_rate(self) -> float:
        return self.cfg.lr if self.cfg.lr is not None else self.default_lr * self.cfg.batch_size

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
