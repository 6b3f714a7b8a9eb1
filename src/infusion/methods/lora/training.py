"""DreamBooth-LoRA (Hu et al. 2021 on DreamBooth): rank-4 LoRA on the UNet's attention
projections (``to_q, to_k, to_v, to_out.0`` of every attn1/attn2), via peft.

Defaults follow diffusers' ``train_dreambooth_lora.py``: rank 4, ``lora_alpha = rank``, Gaussian
init of A and zero B (so step 0 is the base model), AdamW lr 1e-4, weight decay 1e-2, prompts
"a photo of sks <class>", prior preservation off (``--method-arg prior_loss_weight=1`` turns it on).
``--method-arg rank=8`` changes the rank.

File (``--out x.safetensors``): diffusers' ``pytorch_lora_weights.safetensors`` layout written by
``StableDiffusionPipeline.save_lora_weights`` (SDXL: ``StableDiffusionXLPipeline``'s), plus our metadata;
``pipe.load_lora_weights(path)`` loads it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from infusion.core.customization_files import customization_metadata
from infusion.core.safetensors_io import save_safetensors_atomic
from infusion.methods.base import Method
from infusion.methods.dreambooth.training import PRIOR_ARGS, DreamBooth, PriorPreservationMixin

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


class DreamBoothLoRA(DreamBooth):
    name = "lora"
    default_lr = 1e-4  # diffusers train_dreambooth_lora.py
    weight_decay = 1e-2
    out_help = "a pytorch_lora_weights-style .safetensors file, loadable by load_lora_weights"
    method_args_help = {**PRIOR_ARGS, "identifier": "rare token (default sks)", "rank": "LoRA rank (default 4)"}
    default_prior_weight = 0.0  # off by default, as in train_dreambooth_lora.py
    mlm_text_side = Method.mlm_text_side  # UNet LoRA factors only: no text side for --mlm-lambda

    def __init__(self, pipe, cfg):
        from peft import LoraConfig

        # Method.__init__ (not DreamBooth's): only the LoRA factors are trainable.
        super(DreamBooth, self).__init__(pipe, cfg)
        self.identifier = cfg.method_args.get("identifier", "sks")
        self.pipe = pipe
        PriorPreservationMixin._setup_prior(self, pipe, cfg)
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.train_text_encoder = False
        self.cache_text = True
        self.rank = int(cfg.method_args.get("rank", 4))
        if self.rank < 1:
            raise ValueError(f"--method-arg rank must be >= 1, got {self.rank}")
        self.unet.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.rank, init_lora_weights="gaussian",
                                         target_modules=TARGET_MODULES))  # peft marks only lora_A/B trainable

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """UNet LoRA factors in diffusers' key layout (``...to_q.lora.down.weight``)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        return convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))

    def export(self, path, fingerprint: str) -> Path:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        layers = {k: v.detach().float().cpu() for k, v in self.lora_state_dict().items()}
        for k, v in layers.items():
            if not torch.isfinite(v).all():
                raise ValueError(f"refusing to save: LoRA factor {k} is not finite (NaN/inf)")
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # diffusers' own writer fixes the key layout
            writer = StableDiffusionXLPipeline if self.family == "sdxl" else StableDiffusionPipeline
            writer.save_lora_weights(tmp, unet_lora_layers=layers, weight_name="lora.safetensors")
            tensors = load_file(str(Path(tmp) / "lora.safetensors"))
        meta = customization_metadata(self.cfg, self.name, "diffusers-lora", fingerprint, identifier=self.identifier,
                                      rank=self.rank)
        meta["infusion_format"], meta["format"] = meta["format"], "pt"  # "pt": what diffusers itself writes
        save_safetensors_atomic(tensors, path, meta)
        return path
