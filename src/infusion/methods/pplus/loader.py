"""P+ files: one learned token per cross-attention layer, fed through ``LayerStatesProcessor``."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from infusion.core.placeholders import find_placeholders
from infusion.core.safetensors_io import read_safetensors
from infusion.core.tokens import encode_with_token
from infusion.methods.customization import (
    Customization,
    remember_base_attention,
    stock_attention,
)
from infusion.methods.infusion.processor import cross_attention_layers

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

    layer_states_key = KWARG

    def attach(self, pipe):
        tensors, _ = read_safetensors(self.path, "P+ file")
        remember_base_attention(pipe)  # ``disabled`` brings these back (the base model's numerics)
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

        if not any(find_placeholders(p) for p in prompts):  # no concept: the same states for every layer
            from infusion.methods.customization import encode_texts

            states = encode_texts(pipe, prompts)
            return states, {k: states for k in self.layers}
        tokens = self.tokens.to(pipe.text_encoder.device, pipe.text_encoder.dtype)
        states = encode_per_layer(pipe.text_encoder, pipe.tokenizer, prompts, self.name, tokens)  # (B, n, L, C)
        return states[:, 0], {k: states[:, j] for j, k in enumerate(self.layers)}

    def disabled(self, pipe):
        return stock_attention(pipe)
