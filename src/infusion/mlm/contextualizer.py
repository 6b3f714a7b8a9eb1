"""The contextualizer: a small bidirectional transformer that predicts masked tokens from the text
encoder's last hidden states (DESIGN section 7), and its safetensors file.

The text encoder (CLIP) is causal; the contextualizer lets every position see the whole prompt,
so a masked token is predicted from the concept token *and* the context around it. The learned
[MASK] embedding lives in the text encoder's *input token embedding* space and is stored in the
same file: the contextualizer is only meaningful together with the mask it was trained with.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from infusion import __version__
from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic

FORMAT_NAME = "infusion-mlm-contextualizer"
FORMAT_VERSION = "1"


@dataclass
class ContextualizerConfig:
    """Shape of a contextualizer. ``d_model`` defaults to the text encoder's width (no projection)."""

    text_hidden_size: int
    vocab_size: int = 49408  # the CLIP BPE vocabulary of SD1.x
    d_model: int | None = None
    n_layers: int = 4  # "e.g. 4 blocks" (DESIGN section 7)
    n_heads: int = 4
    ff_mult: int = 4
    max_positions: int = 77
    dropout: float = 0.1

    def __post_init__(self):
        if self.d_model is None:
            self.d_model = self.text_hidden_size
        for name in ("text_hidden_size", "vocab_size", "d_model", "n_layers", "n_heads", "ff_mult", "max_positions"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ContextualizerConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_json(cls, text: str) -> "ContextualizerConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            warnings.warn(f"ignoring unknown contextualizer config keys {extra}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


class Contextualizer(nn.Module):
    """Bidirectional pre-norm transformer + LM head over the tokenizer vocabulary.

    forward(states (B, L, H), attention_mask (B, L) 1 = real token, select (B, L) bool or None)
      -> logits (B, L, V), or (M, V) for the M positions where ``select`` is True
    (the head is the expensive part: apply it only where a loss is taken).
    """

    def __init__(self, config: ContextualizerConfig):
        super().__init__()
        self.config = config
        c = config
        self.proj_in = nn.Identity() if c.d_model == c.text_hidden_size else nn.Linear(c.text_hidden_size, c.d_model)
        self.position = nn.Embedding(c.max_positions, c.d_model)
        layer = nn.TransformerEncoderLayer(
            c.d_model, c.n_heads, c.ff_mult * c.d_model, c.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, norm=nn.LayerNorm(c.d_model), enable_nested_tensor=False)
        self.head = nn.Linear(c.d_model, c.vocab_size)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None, select: torch.Tensor | None = None):
        B, L, H = states.shape
        if H != self.config.text_hidden_size:
            raise ValueError(f"contextualizer expects text states of width {self.config.text_hidden_size}, got {H}")
        if L > self.config.max_positions:
            raise ValueError(f"sequence of {L} tokens exceeds the contextualizer's {self.config.max_positions} positions")
        x = self.proj_in(states.to(self.head.weight.dtype)) + self.position.weight[:L]  # (B, L, D)
        pad = None if attention_mask is None else attention_mask == 0  # (B, L) True = ignore
        x = self.encoder(x, src_key_padding_mask=pad)  # (B, L, D)
        if select is not None:
            x = x[select]  # (M, D)
        return self.head(x)  # (B, L, V) or (M, V)


def new_mask_embedding(text_encoder) -> torch.Tensor:
    """Initial [MASK] input embedding (H,): the mean token embedding, a typical-scale starting point."""
    weight = text_encoder.get_input_embeddings().weight.detach()
    return weight.float().mean(0).clone()


def save_contextualizer(
    path: str | os.PathLike,
    contextualizer: Contextualizer,
    mask_embedding: torch.Tensor,
    text_encoder_fingerprint: str = "",
    extra_metadata: dict[str, str] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model.*`` tensors, ``mask_embedding`` (H,) and metadata atomically (safetensors).

    ``dtype``: storage dtype of the weights (float16 halves the file; they load back as float32).
    """

    tensors = {f"model.{k}": v for k, v in contextualizer.state_dict().items()}
    tensors["mask_embedding"] = mask_embedding
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    tensors.update(extra_tensors or {})
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(asdict(contextualizer.config)),
        "text_encoder_fingerprint": text_encoder_fingerprint,
        "text_hidden_size": str(contextualizer.config.text_hidden_size),
        "vocab_size": str(contextualizer.config.vocab_size),
        "library_version": __version__,
    }
    meta.update(extra_metadata or {})
    return save_safetensors_atomic(tensors, path, meta)


def read_contextualizer_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and metadata of a contextualizer (or checkpoint) file; ValueError if not one."""
    path = Path(path)
    tensors, meta = read_safetensors(path, "contextualizer file")
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a contextualizer file (format {meta.get('format')!r}, expected {FORMAT_NAME!r})")
    return tensors, meta


def load_contextualizer(
    path: str | os.PathLike, text_encoder=None, fingerprint: str | None = None
) -> tuple[Contextualizer, torch.Tensor, dict[str, str]]:
    """Load ``(contextualizer in eval mode, mask_embedding (H,), metadata)``.

    With ``text_encoder``: its width must match (ValueError); a different ``fingerprint`` (the
    text encoder the file was trained on) is a warning.
    """
    tensors, meta = read_contextualizer_file(path)
    config = ContextualizerConfig.from_json(meta["config"])
    model = Contextualizer(config)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: contextualizer weights do not match its config (missing {missing}, unexpected {unexpected})")
    mask = tensors["mask_embedding"].float()  # float16 files load as float32, like the weights
    if text_encoder is not None:
        width = text_encoder.get_input_embeddings().weight.shape[1]
        if width != config.text_hidden_size or mask.shape != (width,):
            raise ValueError(
                f"{path} was trained for a text encoder of width {config.text_hidden_size}, this one has width {width}: "
                "pretrain a contextualizer for this model (infusion mlm pretrain)"
            )
    stored = meta.get("text_encoder_fingerprint", "")
    if fingerprint and stored and fingerprint != stored:
        warnings.warn(
            f"{path} was pretrained on text encoder {stored}, this one is {fingerprint}: L_MLM will be less meaningful",
            stacklevel=2,
        )
    return model.eval(), mask, meta
