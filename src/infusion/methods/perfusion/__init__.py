"""Perfusion (Tewel et al. 2023): key-locked rank-one edits of K and V, as an attention processor."""

from infusion.methods.registry import MethodSpec, register

register(MethodSpec(
    name="perfusion",
    trainer="infusion.methods.perfusion.training:Perfusion",
    loader="infusion.methods.perfusion.loader:PerfusionCustomization",
    output="file",
    mlm_weight=None,
))
