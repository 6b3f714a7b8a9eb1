"""Pretraining the contextualizer once per text encoder (DESIGN section 7).

Same MLM objective as the regulariser, on a caption corpus, with the text encoder frozen: only the
contextualizer and the [MASK] input embedding learn. Deterministic under a seed and resumable:
step ``s`` draws its batch, mask and dropout from generators seeded by ``(seed, s)``, and the
checkpoint holds the optimizer state, so an interrupted run resumed from its checkpoint ends
where the uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from infusion.core.base_models import resolve_model
from infusion.core.customization_files import base_fingerprint
from infusion.core.model_configs import load_tokenizer
from infusion.core.model_profiles import model_profile
from infusion.mlm.contextualizer import (
    Contextualizer,
    ContextualizerConfig,
    new_mask_embedding,
    read_contextualizer_file,
    save_contextualizer,
)
from infusion.mlm.loss import mlm_loss
from infusion.mlm.masking import make_batch, tokenize_captions
from infusion.world.scenes import caption_scene, sample_scene

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (stored in the output file)."""

    steps: int | None = field(default=None, metadata={"help": (
        "optimizer steps (default: 2,000 on the world; 100,000 elsewhere, the MLM paper's mlm/train_mlm.sh)")})
    batch_size: int | None = field(default=None, metadata={"help": "captions per step (default: 32 on the world; 128, "
                                                                      "the authors' per-GPU batch, elsewhere)"})
    lr: float | None = field(default=None, metadata={"help": "AdamW learning rate after warmup (default: 5e-4 on the "
                                                            "world; the authors' 1e-4 elsewhere)"})
    warmup: int = field(default=100, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    mask_rate: float = field(default=0.25, metadata={"help": "share of maskable tokens replaced by [MASK] (the authors' "
                                                              "pretraining: 0.25; the regulariser masks 0.15)"})
    seed: int = field(default=0, metadata={"help": "seed of batches, masks, dropout and init"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints (0: only at the end)"})
    objective: str = field(default="non_padding", metadata={"help": (
        "non_padding: every real token, the masked ones weighted --masked-weight (the MLM paper's authors' "
        "mlm/train_mlm.sh; on held-out world captions it predicts masked words better: 0.61 vs 0.53 top-1, "
        "docs/results/contextualizer_accuracy.json); masked: loss at the masked tokens only")})
    masked_weight: float = field(default=5.0, metadata={"help": "weight of masked tokens with objective non_padding"})
    save_dtype: str = field(default="float32", metadata={"help": "dtype of the output file's weights: float32 or float16 "
                                                                 "(half the size; checkpoints stay float32)"})

    def for_model(self, model) -> "PretrainConfig":
        """The budget left unset filled in for ``model``: the world's small one, or the paper's."""
        from dataclasses import replace

        budget = model_profile(model).mlm_budget
        return replace(self, steps=self.steps if self.steps is not None else budget["steps"],
                       batch_size=self.batch_size or budget["batch_size"],
                       lr=self.lr if self.lr is not None else budget["lr"])

    def __post_init__(self):  # the budget (steps, batch_size, lr) may be None until for_model fills it
        if (self.steps is not None and self.steps < 0) or (self.batch_size is not None and self.batch_size < 1) \
                or self.warmup < 0 or self.checkpoint_every < 0:
            raise ValueError(f"steps, warmup, checkpoint_every must be >= 0 and batch_size >= 1: {self}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 < self.mask_rate <= 1.0:
            raise ValueError(f"mask_rate must be in (0, 1], got {self.mask_rate}")
        if self.objective not in ("masked", "non_padding"):
            raise ValueError(f"objective must be masked or non_padding, got {self.objective!r}")
        if self.save_dtype not in ("float32", "float16"):
            raise ValueError(f"save_dtype must be float32 or float16, got {self.save_dtype!r}")


def checkpoint_path(out: str | os.PathLike) -> Path:
    """Where the resumable checkpoint of ``out`` lives: ``ctx.safetensors`` -> ``ctx.ckpt.safetensors``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def read_captions(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one caption each."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no caption file at {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (one caption per line): {e}") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise ValueError(f"{path} holds no captions (one caption per line expected)")
    return captions


def world_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of the built-in world's scenes (the corpus its text encoder was trained on)."""

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [caption_scene(sample_scene(seed + i), seed + i + 7919).text for i in range(n)]


def load_text_side(model):
    """``(text_encoder, tokenizer)`` of a pipeline object, ``"tiny"``, ``"world"``, or a diffusers
    folder with ``text_encoder/`` (and ``tokenizer/``; the packaged CLIP tokenizer otherwise)."""
    if hasattr(model, "text_encoder") and hasattr(model, "tokenizer"):
        return model.text_encoder, model.tokenizer
    if model == "tiny":
        from infusion.core.model_configs import tiny_sd_pipeline

        pipe = tiny_sd_pipeline()
        return pipe.text_encoder, pipe.tokenizer
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(resolve_model(str(model)))
    if not (root / "text_encoder").is_dir():
        raise ValueError(f"{root} is not a diffusers model folder with a text_encoder/ subfolder")
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer")) if (root / "tokenizer").is_dir() else load_tokenizer()
    return text_encoder, tokenizer


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimizer state into safetensors-friendly tensors + JSON param groups."""
    sd = optimizer.state_dict()
    tensors = {
        f"optim.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)) for i, st in sd["state"].items() for k, v in st.items()
    }
    return tensors, json.dumps(sd["param_groups"])


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups_json: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})


def pretrain_contextualizer(
    text_encoder,
    tokenizer,
    captions: Sequence[str],
    out: str | os.PathLike,
    config: PretrainConfig | None = None,
    model_config: ContextualizerConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[Contextualizer, torch.Tensor, list[float]]:
    """Train a contextualizer + [MASK] embedding for ``text_encoder`` and write ``out``.

    Returns ``(contextualizer, mask_embedding (H,), losses of the steps run here)``. With
    ``resume``, continues from ``checkpoint_path(out)`` when it exists (it must come from the same
    text encoder and settings). The text encoder is left exactly as it came.
    """
    config = config or PretrainConfig()
    if None in (config.steps, config.batch_size, config.lr):
        config = config.for_model(text_encoder)  # a module, not a name: the paper's budget
    out = Path(out)
    ckpt = checkpoint_path(out)
    if not captions:
        raise ValueError("no captions to pretrain on")
    width = text_encoder.get_input_embeddings().weight.shape[1]
    model_config = model_config or ContextualizerConfig(text_hidden_size=width, vocab_size=len(tokenizer))
    if model_config.text_hidden_size != width:
        raise ValueError(f"model_config.text_hidden_size={model_config.text_hidden_size} but the text encoder has width {width}")
    fingerprint = base_fingerprint(text_encoder)
    device = text_encoder.get_input_embeddings().weight.device

    torch.manual_seed(config.seed)
    model = Contextualizer(model_config).to(device)
    mask_embedding = torch.nn.Parameter(new_mask_embedding(text_encoder).to(device))
    params = [mask_embedding, *model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if resume and ckpt.is_file():
        tensors, meta = read_contextualizer_file(ckpt)
        if meta.get("text_encoder_fingerprint") != fingerprint:
            raise ValueError(f"checkpoint {ckpt} belongs to another text encoder; delete it or drop --resume")
        before = {k: v for k, v in json.loads(meta["pretrain"]).items() if k != "steps"}
        if ContextualizerConfig.from_json(meta["config"]) != model_config:
            raise ValueError(f"checkpoint {ckpt} holds a contextualizer of another shape; use its settings or drop --resume")
        if before != {k: v for k, v in asdict(config).items() if k != "steps"}:
            logger.warning("resuming %s with settings that differ from the checkpoint's: %s", ckpt, before)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        with torch.no_grad():
            mask_embedding.copy_(tensors["mask_embedding"])
        _restore_optimizer(optimizer, tensors, meta["optimizer_groups"])
        start = int(meta["step"])
        logger.info("resuming from %s at step %d", ckpt, start)
    elif resume:
        logger.info("no checkpoint at %s: starting from step 0", ckpt)

    ids = tokenize_captions(captions, tokenizer)
    flags = [p.requires_grad for p in text_encoder.parameters()]
    was_training = text_encoder.training
    text_encoder.requires_grad_(False).eval()
    model.train()

    def save(path: Path, step: int, with_optimizer: bool, loss: float | None = None) -> None:
        extra, groups = _optimizer_tensors(optimizer) if with_optimizer else ({}, "")
        meta = {"step": str(step), "pretrain": json.dumps(asdict(config)), "n_captions": str(len(captions))}
        if with_optimizer:
            meta["optimizer_groups"] = groups
        if loss is not None:
            meta["final_loss"] = f"{loss:.6g}"
        dtype = None if with_optimizer else getattr(torch, config.save_dtype)
        save_contextualizer(path, model, mask_embedding, fingerprint, meta, extra, dtype=dtype)

    losses: list[float] = []
    done = start  # steps completed
    try:
        import sys

        bar = tqdm(range(start, config.steps), desc="pretrain contextualizer", disable=not progress, initial=start,
                   total=config.steps, mininterval=0.1 if sys.stderr.isatty() else 30)  # logs: a line every 30 s
        for step in bar:
            g = torch.Generator().manual_seed(_step_seed(config.seed, step))
            idx = torch.randint(len(ids), (config.batch_size,), generator=g).tolist()
            batch = make_batch([ids[i] for i in idx], tokenizer).to(device)
            for group in optimizer.param_groups:  # linear warmup, then constant
                group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_step_seed(config.seed, step))  # dropout
                loss = mlm_loss(text_encoder, model, mask_embedding, batch, g, config.mask_rate,
                                target=config.objective, masked_weight=config.masked_weight)
            if not math.isfinite(loss.item()):
                raise ValueError(f"non-finite MLM loss at step {step}; lower --lr (the last checkpoint is kept)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = step + 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                save(ckpt, done, with_optimizer=True)
    except KeyboardInterrupt:
        save(ckpt, done, with_optimizer=True)
        logger.warning("interrupted after step %d; checkpoint written to %s (resume with --resume)", done, ckpt)
        raise
    finally:
        for p, f in zip(text_encoder.parameters(), flags):
            p.requires_grad_(f)
        text_encoder.train(was_training)
    model.eval()
    save(ckpt, config.steps, with_optimizer=True)
    tail = losses[-50:]
    save(out, config.steps, with_optimizer=False, loss=sum(tail) / len(tail) if tail else None)
    return model, mask_embedding.detach(), losses
