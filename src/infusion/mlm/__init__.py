"""Diverse-context MLM regulariser (DESIGN section 7): ``L = L_diff + lambda * L_MLM``.

- ``prompts``: the context-rich prompt set (templates x word lists, five categories)
- ``contextualizer``: the bidirectional transformer + [MASK] embedding, and its file
- ``masking``: which tokens to mask, and the text encoder run with [MASK] in their place
- ``loss``: ``mlm_loss`` and the ``MLMRegularizer`` a trainer calls each step
- ``pretrain``: pretraining the contextualizer once per text encoder
"""

from infusion.mlm.contextualizer import Contextualizer, ContextualizerConfig, load_contextualizer, save_contextualizer
from infusion.mlm.loss import MLMRegularizer, mlm_loss
from infusion.mlm.masking import MLMBatch, encode_masked, make_batch, sample_mask, tokenize_prompts
from infusion.mlm.pretrain import PretrainConfig, load_text_side, pretrain_contextualizer
from infusion.mlm.prompts import CATEGORIES, ContextPromptSet, everyday_prompt_set, prompt_set, world_prompt_set

__all__ = [
    "CATEGORIES",
    "ContextPromptSet",
    "Contextualizer",
    "ContextualizerConfig",
    "MLMBatch",
    "MLMRegularizer",
    "PretrainConfig",
    "encode_masked",
    "everyday_prompt_set",
    "load_contextualizer",
    "load_text_side",
    "make_batch",
    "mlm_loss",
    "pretrain_contextualizer",
    "prompt_set",
    "sample_mask",
    "save_contextualizer",
    "tokenize_prompts",
    "world_prompt_set",
]
