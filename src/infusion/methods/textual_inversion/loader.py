"""Textual Inversion files: ``load_textual_inversion`` (SDXL: into both encoders)."""

from __future__ import annotations

from infusion.core.model_families import SDXL, family_of
from infusion.methods.customization import Customization


class TokenCustomization(Customization):
    """A learned token loaded with diffusers' ``load_textual_inversion``; ``<name>`` stays literal (followed by
    the class phrase when trained ``with_class``)."""

    composable = True

    def attach(self, pipe):

        if family_of(pipe) == SDXL:
            from safetensors.torch import load_file

            state = load_file(str(self.path))
            if set(state) != {"clip_l", "clip_g"}:
                raise ValueError(f"{self.path} is a textual inversion for one text encoder; SDXL needs clip_l and clip_g")
            pipe.load_textual_inversion(state["clip_l"], token=f"<{self.name}>", text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state["clip_g"], token=f"<{self.name}>", text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
            return pipe
        pipe.load_textual_inversion(str(self.path), token=f"<{self.name}>")
        return pipe

    def phrase(self) -> str:
        import json

        args = json.loads(self.meta.get("training") or "{}").get("method_args") or {}
        return f"<{self.name}> {self.class_phrase}" if _truthy(args.get("with_class", False)) else f"<{self.name}>"


def _truthy(v) -> bool:
    return v is True or str(v).lower() in ("1", "true", "yes")
