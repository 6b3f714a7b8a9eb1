"""Test helper: write a diffusers Stable Diffusion pipeline as an original-layout (LDM / A1111)
single-file checkpoint, so ``from_single_file`` can be tested offline.

diffusers ships only the LDM -> diffusers direction; this is its inverse for the SD1.x block layout
(any number of blocks and layers per block), checked in the tests by converting back.
"""

from __future__ import annotations

import re

import torch

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    cfg = unet.config
    L = cfg.layers_per_block
    has_attn = ["CrossAttn" in t for t in cfg.up_block_types]
    out = {}
    for key, v in unet.state_dict().items():
        k = key
        fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
                 "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
        for a, b in fixed.items():
            if k.startswith(a):
                k = b + k[len(a):]
        if ".resnets." in k:
            for a, b in _RESNET:
                k = k.replace(f".{a}.", f".{b}.")
        m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
        if m:
            b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
            k = f"input_blocks.{1 + b * (L + 1) + l}.{0 if kind == 'resnets' else 1}.{rest}"
        m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k)
        if m:
            k = f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
        m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k)
        if m:
            k = f"middle_block.{2 * int(m[1])}.{m[2]}"
        k = k.replace("mid_block.attentions.0.", "middle_block.1.")
        m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
        if m:
            b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
            k = f"output_blocks.{b * (L + 1) + l}.{0 if kind == 'resnets' else 1}.{rest}"
        m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)
        if m:
            b = int(m[1])
            k = f"output_blocks.{b * (L + 1) + L}.{2 if has_attn[b] else 1}.conv.{m[2]}"
        out["model.diffusion_model." + k] = v
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    out = {}
    for key, v in vae.state_dict().items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k)
        if m:
            k = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", k)
        if m:
            k = f"encoder.down.{m[1]}.downsample.{m[2]}"
        m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k)
        if m:
            k = f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k)
        if m:
            k = f"decoder.up.{n - 1 - int(m[1])}.upsample.{m[2]}"
        m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k)
        if m:
            k = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k)
        if m:
            rest = m[2]
            for a, b in [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]:
                rest = rest.replace(a, b) if rest.startswith(a) else rest
            k = f"{m[1]}.mid.attn_1.{rest}"
            if v.ndim == 2:  # linear -> 1x1 conv, as LDM stores them
                v = v[:, :, None, None]
        out["first_stage_model." + k] = v
    return out


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    return {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
            for k, v in text_encoder.state_dict().items()}


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    sd = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **text_encoder_to_ldm(pipe.text_encoder)}
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}
