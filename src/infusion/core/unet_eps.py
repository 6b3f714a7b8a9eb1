"""The noise predictor of a plain (possibly fine-tuned) UNet: ``(z_t [B, 4, h, w], t [B], prompts) -> eps``.

Shared by the metrics (the base model's eps), by every method whose weights carry the customisation (DreamBooth,
LoRA, Custom Diffusion) and, through ``TextEncoderCache`` and ``unet_kwargs``, by Infusion's two-stream predictor.
"""

from __future__ import annotations

import torch

from infusion.core.model_families import added_cond, encode_ids, time_ids, tokenize


class TextEncoderCache:
    """Text conditioning per prompt string, computed once (prompts repeat across samples): states [77, D_text]
    and, for SDXL (``text_encoder_2`` and ``tokenizer_2`` given), the pooled embedding [P] (``families.encode_ids``)."""

    def __init__(self, text_encoder, tokenizer, text_encoder_2=None, tokenizer_2=None):
        self.encoders = [text_encoder] + ([text_encoder_2] if text_encoder_2 is not None else [])
        self.tokenizers = [tokenizer] + ([tokenizer_2] if tokenizer_2 is not None else [])
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """texts (B) -> (encoder hidden states [B, 77, D_text], pooled [B, P] or None)."""
        todo = [s for s in dict.fromkeys(texts) if s not in self._cache]
        if todo:
            states, pooled = encode_ids(self.encoders, [tokenize(tok, todo) for tok in self.tokenizers])
            for i, s in enumerate(todo):
                self._cache[s] = (states[i], None if pooled is None else pooled[i])
        states = torch.stack([self._cache[s][0] for s in texts])
        pooled = None if self._cache[texts[0]][1] is None else torch.stack([self._cache[s][1] for s in texts])
        return states, pooled

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """texts (B) -> encoder hidden states [B, 77, D_text]."""
        return self.encode(texts)[0]


def unet_kwargs(encode: TextEncoderCache, texts: list[str], z_t: torch.Tensor, vae_scale_factor: int = 8) -> dict:
    """The UNet's conditioning of ``texts`` for latents ``z_t``: SDXL adds pooled text and the default time ids
    (original = target = the image size of ``z_t``, crop (0, 0)), as its pipeline does."""
    states, pooled = encode.encode(texts)
    kwargs = {"encoder_hidden_states": states.to(z_t.dtype)}
    if pooled is not None:
        size = (z_t.shape[-2] * vae_scale_factor, z_t.shape[-1] * vae_scale_factor)
        kwargs.update(added_cond(pooled.to(z_t.dtype), time_ids(size, (0, 0), size).expand(len(texts), -1)))
    return kwargs


class UNetEps:
    """eps of a plain (possibly fine-tuned) UNet conditioned on its text encoder(s)."""

    def __init__(self, unet, text_encoder, tokenizer, text_encoder_2=None, tokenizer_2=None, vae_scale_factor: int = 8):
        self.unet = unet
        self.encode = TextEncoderCache(text_encoder, tokenizer, text_encoder_2, tokenizer_2)
        self.vae_scale_factor = vae_scale_factor

    @classmethod
    def from_pipeline(cls, pipe) -> "UNetEps":
        """From a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (anything with unet/text_encoder/tokenizer)."""
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "tokenizer_2", None), getattr(pipe, "vae_scale_factor", 8))

    @torch.no_grad()
    def __call__(self, z_t, t, prompts):
        return self.unet(z_t, t, **unet_kwargs(self.encode, list(prompts), z_t, self.vae_scale_factor)).sample
