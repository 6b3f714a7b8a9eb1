"""DreamBooth-LoRA: low-rank adapters on the UNet's attention (peft), diffusers' LoRA format."""

from infusion.methods.registry import MethodSpec, register

register(MethodSpec(
    name="lora",
    trainer="infusion.methods.lora.training:DreamBoothLoRA",
    loader="infusion.methods.lora.loader:LoRACustomization",
    output="file",
    mlm_weight=None,
))
