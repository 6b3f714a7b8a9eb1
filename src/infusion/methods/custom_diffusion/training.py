"""Custom Diffusion (Kumari et al. 2023): fine-tune the cross-attention key and value projections
(``attn2.to_k``, ``attn2.to_v``) plus a modifier token ``<name>`` written before the class phrase
("a photo of <name> cat").

Defaults follow the paper / diffusers' ``train_custom_diffusion.py``: lr 1e-5 scaled by the batch
size (paper: 8e-5 at batch 8), weight decay 1e-2, modifier token initialised from ``ktn`` (the
script's ``initializer_token``), no gradient through the BOS token's key/value (as diffusers'
``CustomDiffusionAttnProcessor`` does), prior preservation on with lambda 1. The paper
regularises with ~200 *retrieved real* images; offline we generate ``num_class_images`` (default
8) with the base model instead.

Output (``--out FOLDER``): ``pytorch_custom_diffusion_weights.safetensors`` (diffusers' processor
layout, loadable by ``pipe.unet.load_attn_procs(FOLDER, weight_name=..., _pipeline=pipe)``: without
``_pipeline`` diffusers 0.42 silently installs nothing) and ``learned_embeds.safetensors``
(``pipe.load_textual_inversion``), plus ``infusion.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from infusion.core.customization_files import customization_metadata, write_folder_metadata
from infusion.core.kv_attention import KeyValueProcessor
from infusion.core.placeholders import substitute
from infusion.core.safetensors_io import save_safetensors_atomic
from infusion.core.tokens import STAND_IN, encode_with_token, phrase_embedding, stand_in_embed_fn
from infusion.methods.base import Method, MLMTextSide, TextBatch
from infusion.methods.custom_diffusion.loader import EMBEDS, WEIGHTS
from infusion.methods.dreambooth.training import PRIOR_ARGS, PriorPreservationMixin
from infusion.methods.infusion.processor import cross_attention_layers


class KVTrainProcessor(KeyValueProcessor):
    """``attn2`` during training: attention whose BOS key/value carry no gradient (Custom
    Diffusion's detach trick, as diffusers' ``CustomDiffusionAttnProcessor``)."""

    def keys_values(self, attn, text):
        k, v = attn.to_k(text), attn.to_v(text)  # (B, L, D)
        return torch.cat([k[:, :1].detach(), k[:, 1:]], dim=1), torch.cat([v[:, :1].detach(), v[:, 1:]], dim=1)


class CustomDiffusion(PriorPreservationMixin, Method):
    name = "custom-diffusion"
    default_lr = 1e-5  # x batch size (paper: 8e-5 at batch 8; diffusers --scale_lr)
    scale_lr = True
    weight_decay = 1e-2
    cache_text = False  # the modifier token changes every step
    out_help = "a folder: pytorch_custom_diffusion_weights.safetensors + learned_embeds.safetensors + infusion.json"
    method_args_help = {**PRIOR_ARGS, "initializer_token": "word the modifier token starts from (default ktn)"}

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self._setup_prior(pipe, cfg)  # base model still intact here
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.layers = cross_attention_layers(self.unet)  # name -> Attention
        for attn in self.layers.values():
            attn.to_k.weight.requires_grad_(True)
            attn.to_v.weight.requires_grad_(True)
        self.unet.set_attn_processor({
            k: KVTrainProcessor() if k[: -len(".processor")] in self.layers else AttnProcessor2_0()
            for k in self.unet.attn_processors
        })
        init = cfg.method_args.get("initializer_token", "ktn")
        self.token = nn.Parameter(phrase_embedding(pipe.text_encoder, pipe.tokenizer, init).clone())  # (H,)

    def mlm_text_side(self) -> MLMTextSide:
        """L_MLM reaches the modifier token: the concept is "<stand-in> <class>" (both protected), the
        stand-in carried by ``self.token``; the K/V weights get no gradient from it."""
        return MLMTextSide(f"{STAND_IN} {self.cfg.class_phrase}", self.text_encoder,
                           stand_in_embed_fn(self.text_encoder, self.tokenizer, lambda: self.token))

    def encode_captions(self, captions: list[str]) -> TextBatch:

        # "<name>" -> "<name> <class>": the modifier token stays a placeholder for the injector.
        texts = [substitute(c, {self.cfg.name: f"<{self.cfg.name}> {self.cfg.class_phrase}"})[0] for c in captions]
        states, ids, spans = encode_with_token(self.text_encoder, self.tokenizer, texts, self.cfg.name, self.token)
        return TextBatch(states, spans, ids)

    def forward(self, noisy_latents, timesteps, text: TextBatch):
        """noisy_latents (B, 4, h, w), timesteps (B,) -> eps (B, 4, h, w)."""
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text.states).sample

    def export(self, path, fingerprint: str) -> Path:
        path = Path(path)
        weights = {}
        for key in self.unet.attn_processors:  # diffusers' layout: every processor, empty for untrained ones
            name = key[: -len(".processor")]
            if name in self.layers:
                weights[f"{key}.to_k_custom_diffusion.weight"] = self.layers[name].to_k.weight.detach().float().cpu()
                weights[f"{key}.to_v_custom_diffusion.weight"] = self.layers[name].to_v.weight.detach().float().cpu()
            else:
                weights[key] = torch.empty(0)
        token = self.token.detach().float().cpu()[None]  # (1, H)
        for k, v in [*weights.items(), ("token", token)]:
            if not torch.isfinite(v).all():
                raise ValueError(f"refusing to save: {k} is not finite (NaN/inf)")
        meta = customization_metadata(self.cfg, self.name, "diffusers-custom-diffusion", fingerprint)
        save_safetensors_atomic(weights, path / WEIGHTS, {"format": "pt", "method": self.name})
        save_safetensors_atomic({f"<{self.cfg.name}>": token}, path / EMBEDS, {"format": "pt", "method": self.name})
        write_folder_metadata(path, meta)
        return path
