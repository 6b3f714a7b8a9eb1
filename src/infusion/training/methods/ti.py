"""Textual Inversion (Gal et al. 2022): learn one input word embedding for ``<name>``.

Defaults follow diffusers' ``textual_inversion.py``: AdamW, lr 5e-4 scaled by the batch size
(``--scale_lr``), weight decay 1e-2; the new token starts from the class phrase's embedding
(``--initializer_token``; mean over its tokens for a multi-token phrase). Only the new vector is trained: the text encoder,
UNet and VAE stay bit-identical.

File (``--out x.safetensors``): diffusers' ``learned_embeds.safetensors`` layout,
``{"<name>": [1, H]}`` (fp32), plus our metadata; ``pipe.load_textual_inversion(path)`` loads it
and prompts then write ``<name>`` literally.
"""

from __future__ import annotations

import torch
from torch import nn

from ...customized import Customization
from ...io import save_safetensors_atomic
from .base import Method, MLMTextSide, TextBatch, register_method
from .files import customization_metadata
from .tokens import STAND_IN, encode_with_token, phrase_embedding, stand_in_embed_fn


class TokenCustomization(Customization):
    """A learned token loaded with diffusers' ``load_textual_inversion``; ``<name>`` stays literal (followed by
    the class phrase when trained ``with_class``)."""

    method = "ti"
    composable = True

    def attach(self, pipe):
        pipe.load_textual_inversion(str(self.path), token=f"<{self.name}>")
        return pipe

    def phrase(self) -> str:
        import json

        args = json.loads(self.meta.get("training") or "{}").get("method_args") or {}
        return f"<{self.name}> {self.class_phrase}" if _truthy(args.get("with_class", False)) else f"<{self.name}>"


def _truthy(v) -> bool:
    return v is True or str(v).lower() in ("1", "true", "yes")


@register_method
class TextualInversion(Method):
    name = "ti"
    default_lr = 5e-4  # diffusers textual_inversion.py, multiplied by the batch size (scale_lr)
    weight_decay = 1e-2  # diffusers' adam_weight_decay
    cache_text = False  # the learned token changes every step
    out_help = "a learned_embeds-style .safetensors file ({'<name>': [1, H]}), loadable by load_textual_inversion"
    customization_cls = TokenCustomization
    method_args_help = {"with_class": "write the concept as '<name> <class>' in captions, MLM prompts and generation "
                                      "(the MLM paper's authors' form; default false: the token alone, as the TI paper)"}
    mlm_batch_size = 25  # the MLM paper's authors' TI runs

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.with_class = _truthy(cfg.method_args.get("with_class", False))
        self.text_encoder = pipe.text_encoder
        self.unet = pipe.unet
        init = phrase_embedding(pipe.text_encoder, pipe.tokenizer, cfg.class_phrase)  # (H,)
        self.token = nn.Parameter(init.clone())  # (H,)

    def learning_rate(self) -> float:
        return self.cfg.lr if self.cfg.lr is not None else self.default_lr * self.cfg.batch_size

    def mlm_text_side(self) -> MLMTextSide:
        """L_MLM reaches the learned token: the concept is the stand-in, carried by ``self.token``."""
        concept = f"{STAND_IN} {self.cfg.class_phrase}" if self.with_class else STAND_IN
        return MLMTextSide(concept, self.text_encoder, stand_in_embed_fn(self.text_encoder, self.tokenizer, lambda: self.token))

    def encode_captions(self, captions: list[str]) -> TextBatch:
        if self.with_class:
            tag = f"<{self.cfg.name}>"
            captions = [c.replace(tag, f"{tag} {self.cfg.class_phrase}") for c in captions]
        states, ids, spans = encode_with_token(self.text_encoder, self.tokenizer, captions, self.cfg.name, self.token)
        return TextBatch(states, spans, ids)

    def forward(self, noisy_latents, timesteps, text: TextBatch):
        """noisy_latents (B, 4, h, w), timesteps (B,) -> eps (B, 4, h, w)."""
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text.states).sample

    def export(self, path, fingerprint: str) -> dict[str, torch.Tensor]:
        tensors = {f"<{self.cfg.name}>": self.token.detach().float().cpu()[None]}  # (1, H)
        if not torch.isfinite(tensors[f"<{self.cfg.name}>"]).all():
            raise ValueError("refusing to save: the learned embedding is not finite (NaN/inf)")
        meta = customization_metadata(self.cfg, self.name, "diffusers-textual-inversion", fingerprint)
        save_safetensors_atomic(tensors, path, meta)
        return tensors
