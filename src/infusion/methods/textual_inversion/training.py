"""Textual Inversion (Gal et al. 2022): learn one input word embedding for ``<name>``.

Defaults follow diffusers' ``textual_inversion.py``: AdamW, lr 5e-4 scaled by the batch size
(``--scale_lr``), weight decay 1e-2; the new token starts from the class phrase's embedding
(``--initializer_token``; mean over its tokens for a multi-token phrase). Only the new vector is trained: the text encoder,
UNet and VAE stay bit-identical.

File (``--out x.safetensors``): diffusers' ``learned_embeds.safetensors`` layout,
``{"<name>": [1, H]}`` (fp32), plus our metadata; ``pipe.load_textual_inversion(path)`` loads it
and prompts then write ``<name>`` literally. On SDXL one vector per text encoder, in the
``{"clip_l": [1, 768], "clip_g": [1, 1280]}`` layout that diffusers' SDXL docs load with two
``load_textual_inversion(state["clip_l"|"clip_g"], token=..., text_encoder=..., tokenizer=...)`` calls.
"""

from __future__ import annotations

import torch
from torch import nn

from infusion.core.customization_files import customization_metadata
from infusion.core.model_families import text_parts
from infusion.core.safetensors_io import save_safetensors_atomic
from infusion.core.tokens import STAND_IN, encode_with_tokens, phrase_embedding, stand_in_embed_fn
from infusion.methods.base import Method, MLMTextSide, TextBatch
from infusion.methods.textual_inversion.loader import _truthy


class TextualInversion(Method):
    name = "ti"
    default_lr = 5e-4  # diffusers textual_inversion.py, multiplied by the batch size (scale_lr)
    scale_lr = True
    weight_decay = 1e-2  # diffusers' adam_weight_decay
    cache_text = False  # the learned token changes every step
    out_help = "a learned_embeds-style .safetensors file ({'<name>': [1, H]}), loadable by load_textual_inversion"
    method_args_help = {"with_class": "write the concept as '<name> <class>' in captions, MLM prompts and generation "
                                      "(the MLM paper's authors' form; default false: the token alone, as the TI paper)"}
    mlm_batch_size = 25  # the MLM paper's authors' TI runs
    families = ("sd", "sdxl")

    def __init__(self, pipe, cfg):

        super().__init__(pipe, cfg)
        self.with_class = _truthy(cfg.method_args.get("with_class", False))
        self.text_encoder = pipe.text_encoder
        self.unet = pipe.unet
        parts = text_parts(pipe)
        self._tokenizers = [t for t, _ in parts]
        init = phrase_embedding(pipe.text_encoder, pipe.tokenizer, cfg.class_phrase)  # (H,)
        self.token = nn.Parameter(init.clone())  # (H,)
        if len(parts) == 2:  # SDXL: a second vector, in the second encoder's input space (H_2,)
            self.text_encoder_2 = pipe.text_encoder_2
            self.token_2 = nn.Parameter(phrase_embedding(pipe.text_encoder_2, pipe.tokenizer_2, cfg.class_phrase).clone())

    def _vectors(self) -> list[torch.Tensor]:
        return [self.token] + ([self.token_2] if hasattr(self, "token_2") else [])

    def _encoders(self) -> list[nn.Module]:
        return [self.text_encoder] + ([self.text_encoder_2] if hasattr(self, "text_encoder_2") else [])

    def mlm_text_side(self) -> MLMTextSide:
        """L_MLM reaches the learned token: the concept is the stand-in, carried by ``self.token``."""
        if self.family != "sd":
            raise ValueError("--mlm-lambda: the MLM regulariser is ported to Stable Diffusion 1.x/2.x text encoders "
                             "only (its contextualizer reads one encoder); drop --mlm-lambda on SDXL")
        concept = f"{STAND_IN} {self.cfg.class_phrase}" if self.with_class else STAND_IN
        return MLMTextSide(concept, self.text_encoder, stand_in_embed_fn(self.text_encoder, self.tokenizer, lambda: self.token))

    def encode_captions(self, captions: list[str]) -> TextBatch:
        if self.with_class:
            tag = f"<{self.cfg.name}>"
            captions = [c.replace(tag, f"{tag} {self.cfg.class_phrase}") for c in captions]
        states, pooled, ids, spans = encode_with_tokens(self._encoders(), self._tokenizers, captions, self.cfg.name,
                                                        self._vectors())
        return TextBatch(states, spans, ids, pooled)

    def forward(self, noisy_latents, timesteps, text: TextBatch):
        """noisy_latents (B, 4, h, w), timesteps (B,) -> eps (B, 4, h, w)."""
        return self.unet(noisy_latents, timesteps, **text.unet_cond()).sample

    def export(self, path, fingerprint: str) -> dict[str, torch.Tensor]:
        vec = lambda p: p.detach().float().cpu()[None]  # noqa: E731  (1, H)
        if hasattr(self, "token_2"):
            tensors = {"clip_l": vec(self.token), "clip_g": vec(self.token_2)}
        else:
            tensors = {f"<{self.cfg.name}>": vec(self.token)}
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            raise ValueError("refusing to save: the learned embedding is not finite (NaN/inf)")
        meta = customization_metadata(self.cfg, self.name, "diffusers-textual-inversion", fingerprint)
        save_safetensors_atomic(tensors, path, meta)
        return tensors
