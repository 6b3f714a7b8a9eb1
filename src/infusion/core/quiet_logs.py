"""Library log lines that say nothing to this project's users, dropped by message (stdlib ``logging`` filters; no
library offers a switch for these):

- diffusers' "modules ... should be kept in float32: []": ``ModelMixin.to(dtype=...)`` logs it even when the list
  is empty (every ``from_pipe`` printed it twice); a non-empty list still warns.
- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to ...Pil": the project
  does not install torchvision on purpose (its PyPI build breaks beside the pinned torch), and the PIL image
  processor it falls back to is the one it means to use.
- diffusers' "No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'" on every
  ``load_lora_weights`` of a UNet-only LoRA file (DreamBooth-LoRA's files, as diffusers' own training script writes
  them without ``--train_text_encoder``); the message itself says it is safe to ignore then.
- transformers' "The new embeddings will be initialized from a multivariate normal distribution ...": diffusers'
  ``load_textual_inversion`` (Textual Inversion and Custom Diffusion files) grows the token table by one row and
  then writes the concept's vector into it, so how the new row was first filled never reaches an image.
"""

import logging

DROPPED = {
    "diffusers.models.modeling_utils": ("should be kept in float32: []",),
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    "diffusers.loaders.lora_base": ("No LoRA keys associated to CLIPTextModel",),
    "transformers.modeling_utils": ("The new embeddings will be initialized from a multivariate normal",),
}


class DropMessages(logging.Filter):
    """Drops records whose message contains one of ``needles``."""

    def __init__(self, needles: tuple[str, ...]):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.needles)


def install() -> None:
    """Put a ``DropMessages`` filter on each logger of ``DROPPED`` (idempotent; call before the libraries log)."""
    for name, needles in DROPPED.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in log.filters):
            log.addFilter(DropMessages(needles))
