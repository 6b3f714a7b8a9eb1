"""Textual Inversion (Gal et al. 2022): one learned input word embedding; diffusers' learned_embeds format."""

from infusion.methods.registry import MethodSpec, register

register(MethodSpec(
    name="ti",
    trainer="infusion.methods.textual_inversion.training:TextualInversion",
    loader="infusion.methods.textual_inversion.loader:TokenCustomization",
    output="file",
    mlm_weight=1e-05,
))
