"""DreamBooth-LoRA files: diffusers' ``load_lora_weights``."""

from __future__ import annotations

from infusion.methods.customization import Customization
from infusion.methods.dreambooth.loader import identifier_phrase


class LoRACustomization(Customization):
    """LoRA weights loaded with diffusers' ``load_lora_weights``; ``<name>`` -> ``"sks <class>"``."""


    def attach(self, pipe):
        pipe.load_lora_weights(str(self.path), adapter_name=self._adapter())
        return pipe

    def _adapter(self) -> str:
        return "".join(ch if ch.isalnum() else "_" for ch in self.name)

    def phrase(self) -> str:
        return identifier_phrase(self.meta, self.class_phrase)

    def disabled(self, pipe):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            pipe.disable_lora()
            try:
                yield
            finally:
                pipe.enable_lora()

        return ctx()
