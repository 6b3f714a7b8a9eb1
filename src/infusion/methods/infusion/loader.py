"""Infusion concept files through ``load_customized``: an ``InfusionPipeline`` samples both streams in one UNet call
per step, so the base images come for free and a prompt without a concept is the base model's, exactly."""

from __future__ import annotations

from infusion.methods.customization import Customization
from infusion.methods.infusion.concept import Concept
from infusion.methods.infusion.eps import InfusionEps
from infusion.methods.infusion.pipeline import InfusionPipeline


class InfusionCustomization(Customization):
    """One concept file (Deltas per ``attn2`` layer) loaded into an ``InfusionPipeline``; ``<name>`` -> the class
    phrase, with the residual injected at its token positions (DESIGN sections 1-3)."""

    composable = True  # several concepts, even of one class, compose in one prompt
    keeps_base_weights = True  # the Deltas live in the attention processors, never in the base weights
    attention_maps = True  # InfusionPipeline(return_attention=True): F's maps of the concept's tokens

    @classmethod
    def load_all(cls, files, metas, base_loader):
        pipe = base_loader(InfusionPipeline)  # a loaded pipeline given to load_customized comes back as it is
        if not isinstance(pipe, InfusionPipeline):
            pipe = InfusionPipeline.from_pipe(pipe)
        custom = []
        for f, m in zip(files, metas):
            c = cls(f, m)
            c.concept = pipe.load_concept(Concept.load(f))  # checks layers, family and fingerprint
            custom.append(c)
        return pipe, custom

    @classmethod
    def generate(cls, model, prompts, negatives, latents, common, return_base):
        out = model.pipe(prompts, negative_prompt=negatives, latents=latents, return_base=return_base, **common)
        return out.images, out.base_images

    @classmethod
    def eps(cls, model, z_t, t, prompts):
        return InfusionEps.from_pipeline(model.pipe, [c.concept for c in model.customizations])(z_t, t, list(prompts))
