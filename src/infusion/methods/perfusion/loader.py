"""Perfusion files: the gated rank-one K/V edit (``RankOneEdit``) in every ``attn2``, and the learned token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from infusion.core.kv_attention import KeyValueProcessor
from infusion.core.safetensors_io import read_safetensors
from infusion.core.tokens import encode_with_token
from infusion.methods.customization import (
    Customization,
    remember_base_attention,
    stock_attention,
)
from infusion.methods.infusion.processor import cross_attention_layers


class RankOneEdit:
    """The concept's edit, shared by every layer's processor.

    concept_input i* (C_t,), superclass_input i_class (C_t,), cov_inv_concept C^-1 i* (C_t,),
    value_targets: layer -> o*_V (D,); beta, tau: the gate.
    """

    def __init__(self, concept_input, superclass_input, cov_inv_concept, value_targets, beta=0.75, tau=0.1):
        self.rows: torch.Tensor | None = None  # (B,) bool: edit only these batch rows (None: every row, the paper)
        self.concept_input, self.superclass_input = concept_input, superclass_input
        self.cov_inv_concept, self.value_targets = cov_inv_concept, value_targets
        self.beta, self.tau = float(beta), float(tau)

    def project(self, x, weight, out, target):
        """Edited projection: x (B, L, C_t), weight [D, C_t], out = W x (+ b) (B, L, D), target (D,) -> (B, L, D)."""
        # the pipeline's device and dtype (it may have been moved after loading: ``pipe.to("cuda", torch.float16)``)
        i = self.concept_input.to(device=x.device, dtype=x.dtype)
        u = self.cov_inv_concept.to(device=x.device, dtype=x.dtype)
        s = (x @ u) / (i @ u)  # (B, L): energy along the concept direction, 1 at x = i*
        gate = torch.sigmoid((s - self.beta) / self.tau)[..., None]  # (B, L, 1)
        return out - s[..., None] * F.linear(i, weight) + gate * target.to(device=x.device, dtype=x.dtype)


class PerfusionProcessor(KeyValueProcessor):
    """``attn2``: K and V through the gated rank-one edit, then SDPA attention (as ``AttnProcessor2_0``)."""

    def __init__(self, layer: str, edit: RankOneEdit | None = None):
        self.layer, self.edit = layer, edit

    def keys_values(self, attn, text):
        e = self.edit
        if e is None:
            return None
        key_target = F.linear(e.superclass_input.to(device=text.device, dtype=text.dtype), attn.to_k.weight)  # (D,)
        k_stock, v_stock = attn.to_k(text), attn.to_v(text)  # (B, L, D)
        k = e.project(text, attn.to_k.weight, k_stock, key_target)  # (B, L, D)
        v = e.project(text, attn.to_v.weight, v_stock, e.value_targets[self.layer])  # (B, L, D)
        if e.rows is not None:  # concept_rows_only: rows whose prompt names no concept keep the stock projection
            if e.rows.shape[0] != text.shape[0]:
                raise ValueError(f"{e.rows.shape[0]} row flags for a batch of {text.shape[0]} rows")
            keep = e.rows.to(text.device)[:, None, None]
            k, v = torch.where(keep, k, k_stock), torch.where(keep, v, v_stock)
        return k, v


def install_perfusion(unet, edit: RankOneEdit) -> list[str]:
    """Perfusion processors on every attn2 (SDPA elsewhere); returns the attn2 names."""
    layers = list(cross_attention_layers(unet))
    unet.set_attn_processor({
        k: PerfusionProcessor(k[: -len(".processor")], edit) if k[: -len(".processor")] in layers else AttnProcessor2_0()
        for k in unet.attn_processors
    })
    return layers


class PerfusionCustomization(Customization):
    """Loads the edit into ``PerfusionProcessor``s; ``<name>`` -> the learned token."""


    def attach(self, pipe):
        t, _ = read_safetensors(self.path, "Perfusion file")
        layers = list(cross_attention_layers(pipe.unet))
        targets = {k[: -len(".value_target")]: v for k, v in t.items() if k.endswith(".value_target")}
        if set(targets) != set(layers):
            raise ValueError(f"Perfusion file {self.path} does not fit this UNet: layers missing "
                             f"{sorted(set(layers) - set(targets))[:3]}, unknown {sorted(set(targets) - set(layers))[:3]}")
        width = pipe.text_encoder.config.hidden_size
        if t["concept_input"].shape[-1] != width:
            raise ValueError(f"Perfusion file {self.path} was trained with text states {t['concept_input'].shape[-1]} "
                             f"wide; this text encoder's are {width} (trained on {self.meta.get('base_model')})")
        attns = cross_attention_layers(pipe.unet)
        for k, v in targets.items():
            if v.shape[-1] != attns[k].to_v.out_features:
                raise ValueError(f"Perfusion file {self.path}: layer {k} has width {v.shape[-1]} in the file, "
                                 f"{attns[k].to_v.out_features} in the model")
        device = pipe.unet.device  # the file's precision is kept; ``project`` casts to each call's device and dtype
        self.edit = RankOneEdit(t["concept_input"].to(device), t["superclass_input"].to(device),
                                t["cov_inv_concept"].to(device), {k: v.to(device) for k, v in targets.items()},
                                float(self.meta.get("inference_beta", self.meta.get("beta", 0.75))),
                                float(self.meta.get("inference_temperature", self.meta.get("temperature", 0.1))))
        self.token = t["token"][0]  # (H,)
        import json

        args = json.loads(self.meta.get("training") or "{}").get("method_args") or {}
        self.rows_only = str(args.get("concept_rows_only", False)).lower() in ("1", "true", "yes")
        remember_base_attention(pipe)  # ``disabled`` brings these back (the base model's numerics)
        install_perfusion(pipe.unet, self.edit)
        return pipe

    def concept_rows(self, flags: list[bool]):
        """With ``concept_rows_only`` (a departure from the paper, off by default): the edit applies only to rows
        whose prompt names the concept; the others (e.g. a plain "a photo of a cat", CFG's empty prompt) get the
        stock K/V projections, so concept-free prompts give the base model's output exactly."""
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            if not self.rows_only:
                yield
                return
            self.edit.rows = torch.tensor(flags, dtype=torch.bool)
            try:
                yield
            finally:
                self.edit.rows = None

        return ctx()

    def encode(self, pipe, prompts):
        token = self.token.to(pipe.text_encoder.device, pipe.text_encoder.dtype)
        return encode_with_token(pipe.text_encoder, pipe.tokenizer, prompts, self.name, token)[0], None

    def disabled(self, pipe):
        return stock_attention(pipe)
