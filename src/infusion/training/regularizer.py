"""The diverse-context MLM regulariser as the trainer uses it (DESIGN section 7, second paper):
``L = L_diff + lambda * L_MLM``, built once from ``TrainConfig`` and the method's text side.

The method declares what L_MLM regularises (``Method.mlm_text_side``); this module loads the
frozen contextualizer, draws the prompt set and checks it, and the trainer calls ``reg(side, g)``
each step with that step's generator, so a resumed run draws the same MLM batches.
"""

from __future__ import annotations

from pathlib import Path

import torch

from infusion.methods.base import MLMTextSide
from infusion.mlm import MLMRegularizer, load_contextualizer, prompt_set
from infusion.training.config import MLM_VOCABS, TrainConfig

N_PROMPTS = 20000  # drawn from a built-in set (DESIGN: "tens of thousands of prompts")


def read_prompt_file(path: str | Path, placeholder: str) -> list[str]:
    """Non-empty lines of a UTF-8 file; each must write the concept as ``placeholder``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"--mlm-prompts {path} is not UTF-8 text (one prompt per line): {e}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--mlm-prompts {path} holds no prompts (one per line, each with {placeholder})")
    bad = [(i, p) for i, p in enumerate(prompts, 1) if placeholder not in p]
    if bad:
        raise ValueError(f"--mlm-prompts {path}: prompt {bad[0][0]} ({bad[0][1]!r}) does not write the concept as "
                         f"{placeholder} ({len(bad)} of {len(prompts)} prompts lack it)")
    return prompts


def mlm_prompts(cfg: TrainConfig) -> list[str]:
    """The context-rich prompts of ``cfg.mlm_prompts``, the concept written ``<cfg.name>``."""
    placeholder = f"<{cfg.name}>"
    if cfg.mlm_prompts in MLM_VOCABS:
        pset = prompt_set(cfg.mlm_prompts, placeholder)
        return pset.generate(min(N_PROMPTS, len(pset)), seed=cfg.seed)
    return read_prompt_file(cfg.mlm_prompts, placeholder)


def build_regularizer(cfg: TrainConfig, side: MLMTextSide, tokenizer, fingerprint: str | None = None,
                      batch_size: int | None = None) -> MLMRegularizer:
    """``MLMRegularizer`` with weight ``cfg.mlm_lambda``: contextualizer frozen (eval, no grad), prompts of
    ``cfg.mlm_prompts``. ValueError when the contextualizer does not fit the text encoder's width."""
    contextualizer, mask, _ = load_contextualizer(cfg.contextualizer, side.text_encoder, fingerprint)
    vocab = contextualizer.config.vocab_size
    if vocab < len(tokenizer):
        raise ValueError(f"--contextualizer {cfg.contextualizer} predicts {vocab} token ids, this tokenizer has "
                         f"{len(tokenizer)}: pretrain one for this model (infusion mlm pretrain)")
    return MLMRegularizer(contextualizer, mask, tokenizer, side.concept_text, mlm_prompts(cfg), weight=cfg.mlm_lambda,
                          placeholder=f"<{cfg.name}>", batch_size=batch_size or cfg.mlm_batch or 4)


def mlm_term(reg: MLMRegularizer, side: MLMTextSide, generator: torch.Generator) -> torch.Tensor:
    """``lambda * L_MLM`` (scalar) on a batch drawn from ``generator`` (the step's). With ``side.embed_fns``
    (P+): one L_MLM per learned vector on the same prompts and mask, averaged, as the MLM paper's authors do
    (``pplus/pplus_train_clean.py`` L656-676: the captions x per-layer tokens are flattened into one batch and
    the cross-entropy is the mean over all of it)."""
    if not side.embed_fns:
        return reg(side.text_encoder, side.embed_fn, generator=generator)
    state = generator.get_state()
    total, raw = 0.0, 0.0
    for fn in side.embed_fns:
        generator.set_state(state)  # the same batch and mask for every vector
        total = total + reg(side.text_encoder, fn, generator=generator)
        raw += reg.last_loss
    reg.last_loss = raw / len(side.embed_fns)
    return total / len(side.embed_fns)
