"""Custom Diffusion (Kumari et al. 2023): cross-attention K/V weights + a modifier token."""

from infusion.methods.registry import MethodSpec, register

register(MethodSpec(
    name="custom-diffusion",
    trainer="infusion.methods.custom_diffusion.training:CustomDiffusion",
    loader="infusion.methods.custom_diffusion.loader:CustomDiffusionCustomization",
    output="folder",
    mlm_weight=0.0001,
))
