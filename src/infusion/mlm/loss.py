"""L_MLM and the regulariser a trainer calls each step (DESIGN section 7):
``L = L_diff + lambda * L_MLM``.

The contextualizer and the [MASK] embedding are frozen; L_MLM's gradient flows through them to
the text side only: the text encoder (DreamBooth), its token embedding rows (TI, Custom
Diffusion), or whatever an ``embed_fn`` reads (P+).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from infusion.mlm.contextualizer import Contextualizer, load_contextualizer
from infusion.mlm.masking import EmbedFn, MLMBatch, encode_masked, make_batch, sample_mask, tokenize_prompts
from infusion.mlm.prompts import DEFAULT_PLACEHOLDER, prompt_set

# The paper's lambda per method (DESIGN section 7), a starting point for ``weight``, is each method's
# ``MethodSpec.mlm_weight``: ``infusion.methods.reference_mlm_weight(name)``.


def mlm_loss(
    text_encoder,
    contextualizer: Contextualizer,
    mask_embedding: torch.Tensor,
    batch: MLMBatch,
    generator: torch.Generator | None = None,
    mask_rate: float = 0.15,
    embed_fn: EmbedFn | None = None,
    target: str = "masked",
    masked_weight: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy of the contextualizer's predictions (scalar).

    Masks ``mask_rate`` of ``batch.maskable`` (never BOS/EOS/padding or protected concept/class
    tokens), runs the text encoder on [MASK]-substituted input embeddings, and predicts the
    original ids from its last hidden states (B, L, H). ``target="masked"``: the mean over the masked
    positions (the regulariser, as the authors' customisation scripts: ``mlm_target='masked'``);
    ``"non_padding"``: every real token (BOS, words, EOS), masked ones weighted ``masked_weight``, as the
    authors pretrain their contextualizer (``mlm/train_mlm.sh``: ``--mlm_target non_padding --mlm_weight 5``),
    normalised by the number of real tokens.
    """
    if target not in ("masked", "non_padding"):
        raise ValueError(f"MLM target must be masked or non_padding, got {target!r}")
    mask = sample_mask(batch.maskable, mask_rate, generator)  # (B, L)
    if not bool(mask.any()):
        raise ValueError("no token can be masked: every prompt holds only special, concept or class tokens")
    targets = batch.input_ids[mask]  # (M,)
    vocab = contextualizer.config.vocab_size
    if int(targets.max()) >= vocab:
        raise ValueError(
            f"a maskable token id ({int(targets.max())}) lies outside the contextualizer's vocabulary of {vocab}: "
            "added tokens (e.g. a TI placeholder) must be part of the protected concept text"
        )
    states = encode_masked(text_encoder, batch.input_ids, mask, mask_embedding, embed_fn)  # (B, L, H)
    if target == "non_padding":
        real = batch.attention_mask.bool()  # (B, L)
        logits = contextualizer(states, batch.attention_mask, select=real)  # (R, V)
        ce = F.cross_entropy(logits.float(), batch.input_ids[real], reduction="none")  # (R,)
        weight = torch.where(mask[real], float(masked_weight), 1.0)
        return (ce * weight).sum() / real.sum()
    logits = contextualizer(states, batch.attention_mask, select=mask)  # (M, V)
    return F.cross_entropy(logits.float(), targets)


class MLMRegularizer:
    """Samples context-rich prompts, masks them and returns ``weight * L_MLM``.

    Trainer wiring (after building the method's text side)::

        reg = MLMRegularizer.from_file(path, tokenizer, concept_text="<mycat>", weight=1e-5)
        loss = loss_diff + reg(text_encoder)              # TI, DreamBooth, Custom Diffusion
        loss = loss_diff + reg(text_encoder, embed_fn)    # P+: embeddings from the method

    ``concept_text`` is how the method writes its concept in a prompt (``"<mycat>"`` for TI,
    ``"sks cat"`` for DreamBooth, ``"<new1> cat"`` for Custom Diffusion); every one of its tokens
    is protected from masking. ``prompts`` hold ``placeholder`` where the concept goes.
    P+ learns one embedding per UNet layer: one call per layer's ``embed_fn`` on the same batch and mask,
    averaged (``training.regularizer.mlm_term``), as the MLM paper's authors run it.
    """

    def __init__(
        self,
        contextualizer: Contextualizer,
        mask_embedding: torch.Tensor,
        tokenizer,
        concept_text: str,
        prompts: Sequence[str],
        weight: float = 1.0,
        batch_size: int = 4,
        mask_rate: float = 0.15,
        seed: int = 0,
        placeholder: str = DEFAULT_PLACEHOLDER,
    ):
        if not prompts:
            raise ValueError("MLMRegularizer needs a non-empty prompt set")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(concept_text, str) or not concept_text.strip():
            raise ValueError(f"concept_text must be the non-empty text of the concept reference, got {concept_text!r}")
        missing = [p for p in prompts[:100] if placeholder not in p]
        if missing:
            raise ValueError(f"prompt {missing[0]!r} lacks the concept placeholder {placeholder}")
        self.contextualizer = contextualizer.eval().requires_grad_(False)
        self.mask_embedding = mask_embedding.detach().clone().requires_grad_(False)
        self.tokenizer = tokenizer
        self.concept_text: Mapping[str, str] = {placeholder[1:-1]: concept_text}
        self.prompts = list(prompts)
        self.weight = float(weight)
        self.batch_size = batch_size
        self.mask_rate = mask_rate
        self.generator = torch.Generator().manual_seed(seed)
        self.last_loss: float | None = None  # unweighted L_MLM of the last call, for logging
        self._cache: dict[int, tuple[list[int], list[int]]] = {}

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        tokenizer,
        concept_text: str,
        text_encoder=None,
        vocab: str = "everyday",
        n_prompts: int = 20000,
        prompt_seed: int = 0,
        **kwargs,
    ) -> "MLMRegularizer":
        """Load a pretrained contextualizer and draw ``n_prompts`` prompts of ``vocab``."""
        fingerprint = None
        if text_encoder is not None:
            from infusion.core.customization_files import base_fingerprint

            fingerprint = base_fingerprint(text_encoder)
        contextualizer, mask, _ = load_contextualizer(path, text_encoder, fingerprint)
        pset = prompt_set(vocab, kwargs.get("placeholder", DEFAULT_PLACEHOLDER))
        prompts = pset.generate(min(n_prompts, len(pset)), seed=prompt_seed)
        return cls(contextualizer, mask, tokenizer, concept_text, prompts, **kwargs)

    def sample_batch(self, generator: torch.Generator | None = None) -> MLMBatch:
        """``batch_size`` prompts drawn uniformly (with ``generator``, else the regulariser's own), tokenised."""
        g = self.generator if generator is None else generator
        idx = torch.randint(len(self.prompts), (self.batch_size,), generator=g).tolist()
        rows = [self._tokenized(i) for i in idx]
        return make_batch([r[0] for r in rows], self.tokenizer, [r[1] for r in rows])

    def _tokenized(self, i: int) -> tuple[list[int], list[int]]:
        if i not in self._cache:
            b = tokenize_prompts([self.prompts[i]], self.concept_text, self.tokenizer)
            n = int(b.attention_mask.sum())
            self._cache[i] = (b.input_ids[0, :n].tolist(), [p for p in range(n) if not b.maskable[0, p]])
        return self._cache[i]

    def loss(self, text_encoder, embed_fn: EmbedFn | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unweighted L_MLM on a fresh batch (scalar). ``generator`` (CPU): draw the prompts and the mask
        from it instead of the regulariser's own stream (a trainer passes its per-step generator, so
        a resumed run draws the same batches)."""
        g = self.generator if generator is None else generator
        device = text_encoder.get_input_embeddings().weight.device
        if self.contextualizer.head.weight.device != device:
            self.contextualizer.to(device)
        batch = self.sample_batch(g).to(device)
        mask_gen = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        out = mlm_loss(text_encoder, self.contextualizer, self.mask_embedding, batch, mask_gen, self.mask_rate, embed_fn)
        if torch.is_grad_enabled() and not out.requires_grad:
            raise ValueError(
                "L_MLM has no gradient path: nothing on the text side is trainable (token embeddings, text encoder, "
                "or what embed_fn reads); the MLM regulariser only applies to methods that learn text-side parameters"
            )
        self.last_loss = float(out.detach())
        return out

    def __call__(self, text_encoder, embed_fn: EmbedFn | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``weight * L_MLM`` (scalar), ready to add to the diffusion loss."""
        return self.weight * self.loss(text_encoder, embed_fn, generator)
