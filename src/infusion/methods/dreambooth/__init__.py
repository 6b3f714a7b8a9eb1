"""DreamBooth (Ruiz et al. 2023): fine-tune the UNet (and text encoder) with class-prior preservation."""

from infusion.methods.registry import MethodSpec, register

register(MethodSpec(
    name="dreambooth",
    trainer="infusion.methods.dreambooth.training:DreamBooth",
    loader="infusion.methods.dreambooth.loader:DreamBoothCustomization",
    output="folder",
    mlm_weight=0.0001,
))
