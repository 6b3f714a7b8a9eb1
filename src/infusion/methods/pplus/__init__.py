"""P+ (Voynov et al. 2023): one learned token per cross-attention layer."""

from infusion.methods.registry import MethodSpec, register

register(MethodSpec(
    name="pplus",
    trainer="infusion.methods.pplus.training:PPlus",
    loader="infusion.methods.pplus.loader:PPlusCustomization",
    output="file",
    mlm_weight=0.00025,
))
