"""Custom Diffusion folders: K/V weights (diffusers' ``load_attn_procs``) + the modifier token."""

from __future__ import annotations

from infusion.methods.customization import Customization, stock_attention

WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"
EMBEDS = "learned_embeds.safetensors"

class CustomDiffusionCustomization(Customization):
    """K/V weights as diffusers' ``CustomDiffusionAttnProcessor`` + the modifier token;
    ``<name>`` -> ``"<name> <class>"``."""


    def attach(self, pipe):
        pipe.load_textual_inversion(str(self.path / EMBEDS), token=f"<{self.name}>")
        pipe.unet.load_attn_procs(str(self.path), weight_name=WEIGHTS, _pipeline=pipe)
        return pipe

    def phrase(self) -> str:
        return f"<{self.name}> {self.class_phrase}"

    def disabled(self, pipe):
        return stock_attention(pipe)
