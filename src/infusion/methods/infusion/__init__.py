"""Infusion (Zeng et al. 2024): F's attention maps, a learned residual on the concept token's value (DESIGN section 1).

processor.py: the cross-attention processor; pipeline.py: ``InfusionPipeline``; concept.py: the concept file;
training.py: the trainer plugin; loader.py: generation through ``load_customized``.
"""

from infusion.methods.registry import MethodSpec, register

register(MethodSpec(
    name="infusion",
    trainer="infusion.methods.infusion.training:InfusionMethod",
    loader="infusion.methods.infusion.loader:InfusionCustomization",
    output="file",
    mlm_weight=None,
))
