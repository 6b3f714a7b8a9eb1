"""The trainer-side contract of a method: ``Method`` (a plugin of the one trainer) and the batches it sees.

A method is an ``nn.Module`` whose ``forward(noisy_latents, timesteps, text)`` predicts the
noise with the customised model; it declares its trainable parameters, how it encodes
captions, and how it exports its result. The trainer never branches on the method's name; the registry (``infusion.methods.registry``) finds the
class from the method's ``MethodSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

from infusion.core.model_families import added_cond, require_family, text_encoders
from infusion.core.model_profiles import model_profile
from infusion.core.placeholders import ConceptSpan
from infusion.methods.registry import available_methods, get_method


def param_key(layer: str) -> str:
    """A module name as a ``ParameterDict`` key (keys may not contain ".")."""
    return layer.replace(".", "__")


@dataclass
class TextBatch:
    """Encoded captions: the UNet's conditioning of each row.

    states [B, L, C]; spans: per row, the concept's token positions; ids [B, L] token ids (methods that
    re-encode); SDXL only: pooled [B, P] (the second encoder's projected embedding) and time_ids [B, 6]
    (each row's image micro-conditioning, set by the trainer with ``with_time_ids``).
    """

    states: torch.Tensor
    spans: list[list[ConceptSpan]]
    ids: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def select(self, idx: torch.Tensor) -> "TextBatch":
        i = idx.tolist()
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return TextBatch(self.states[idx.to(self.states.device)], [self.spans[j] for j in i], pick(self.ids),
                         pick(self.pooled), pick(self.time_ids))

    def to(self, device) -> "TextBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TextBatch(self.states.to(device), self.spans, move(self.ids), move(self.pooled), move(self.time_ids))

    def with_time_ids(self, time_ids: torch.Tensor | None) -> "TextBatch":
        return TextBatch(self.states, self.spans, self.ids, self.pooled, time_ids)

    def unet_cond(self) -> dict:
        """The UNet's conditioning kwargs: ``encoder_hidden_states`` (+ SDXL's ``added_cond_kwargs``)."""

        return {"encoder_hidden_states": self.states, **added_cond(self.pooled, self.time_ids)}


@dataclass
class PriorData:
    """Class-prior examples mixed into every step (DreamBooth's prior preservation, Eq. 2).

    mean, std: cached VAE posteriors [M, 4, h, w]; captions: the prompt of each example (M);
    weight: the prior loss weight lambda.
    """

    mean: torch.Tensor
    std: torch.Tensor
    captions: list[str]
    weight: float = 1.0


@dataclass
class MLMTextSide:
    """What the diverse-context MLM regulariser (DESIGN section 7) needs from a method.

    concept_text: how the method writes its concept in a prompt (``"sks"`` stand-in for TI,
        ``"sks cat"`` for DreamBooth and Custom Diffusion); all its tokens are protected from masking.
    text_encoder: the encoder L_MLM runs through.
    embed_fn: ``input_ids (B, L) -> input embeddings (B, L, H)`` when the learned vector lives outside
        the embedding matrix (the stand-in's rows replaced); ``None``: the plain lookup.
    embed_fns: several such functions, one L_MLM each on the same prompts and mask, averaged (P+, as its
        authors' ``pplus_train_clean.py`` encodes each caption with each layer's token).
    """

    concept_text: str
    text_encoder: nn.Module
    embed_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    # several learned vectors regularised one by one on the same batch and mask, losses averaged (P+: one per layer)
    embed_fns: list[Callable[[torch.Tensor], torch.Tensor]] | None = None


def supports_mlm(method_cls: type["Method"]) -> bool:
    """Whether ``method_cls`` declares a text side for ``--mlm-lambda`` (overrides ``mlm_text_side``)."""
    return method_cls.mlm_text_side is not Method.mlm_text_side


class Method(nn.Module):
    """Base class of a customisation method.

    Subclasses set ``name`` and ``default_lr``, freeze what they do not train in ``__init__``, and
    implement ``encode_captions``, ``forward`` and ``export``.
    """

    name: ClassVar[str] = ""
    default_lr: ClassVar[float] = 1e-4
    weight_decay: ClassVar[float] = 0.0
    cache_text: ClassVar[bool] = True  # captions' text states are frozen: encode once
    out_help: ClassVar[str] = "a safetensors file"  # what --out is for this method (shown by --help)
    method_args_help: ClassVar[dict[str, str] | None] = None  # --method-arg keys it reads (None: not declared)
    method_args_example: ClassVar[str] = ""  # a typical --method-arg, shown as a hint by the web page
    # Defaults that replace the paper's on the built-in world (``--model world``), each measured (see the class);
    # read through the model's profile (``WorldProfile.method_defaults``)
    world_defaults: ClassVar[dict] = {}
    mlm_batch_size: ClassVar[int] = 4  # prompts per L_MLM batch unless --mlm-batch says otherwise
    scale_lr: ClassVar[bool] = False  # the default lr is per sample: multiplied by the batch size
    families: ClassVar[tuple[str, ...]] = ("sd",)  # model families it is ported to (``infusion.core.model_families``)

    def __init__(self, pipe, cfg):
        super().__init__()

        ported = [m for m in available_methods() if "sdxl" in get_method(m).families]
        self.family = require_family(pipe, self.families, f"method {self.name!r}", ported)
        self.cfg = cfg
        self.tokenizer = pipe.tokenizer
        for m in (pipe.unet, pipe.vae, *text_encoders(pipe)):
            m.requires_grad_(False)
            m.eval()
        if cfg.gradient_checkpointing:  # every method backpropagates through the UNet
            pipe.unet.enable_gradient_checkpointing()
        self._check_method_args(cfg.method_args)

    @classmethod
    def unknown_method_args(cls, args: dict) -> list[str]:
        """The --method-arg keys in ``args`` this method does not read (none when it declares no keys)."""
        return [] if cls.method_args_help is None else sorted(set(args) - set(cls.method_args_help))

    def _check_method_args(self, args: dict) -> None:
        """Warn about --method-arg keys this method does not read (a typo would otherwise pass silently)."""
        unknown = self.unknown_method_args(args)
        if unknown:
            import warnings

            known = ", ".join(sorted(self.method_args_help)) or "none"
            warnings.warn(f"method {self.name!r} ignores --method-arg {unknown}; it reads: {known}", UserWarning,
                          stacklevel=3)

    def learning_rate(self) -> float:
        return self.cfg.lr if self.cfg.lr is not None else self.default_learning_rate(self.cfg.model, self.cfg.batch_size)

    @classmethod
    def default_learning_rate(cls, model, batch_size: int) -> float:
        """The lr ``--lr`` omitted gives: the paper's (``world_defaults`` on the world), times the batch size for
        methods that scale it (diffusers' ``--scale_lr``: TI, P+, Custom Diffusion)."""

        lr = model_profile(model).method_defaults(cls).get("lr", cls.default_lr)
        return lr * batch_size if cls.scale_lr else lr

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Named trainable tensors (for resume checkpoints)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def max_train_timestep(self, num_train_timesteps: int) -> int:
        """Instance rows draw t uniformly from [0, this); every method but a time-limited Infusion: all of them."""
        return num_train_timesteps

    def attach_latents(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The scaled VAE posteriors (M, 4, h, w) the instance rows are drawn from; most methods ignore them."""

    def prepare_batch(self, idx: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, noise_scheduler,
                      generator: torch.Generator) -> None:
        """Called before each step's forward with the instance rows' image indices, noise and timesteps (B,);
        most methods ignore it (draw from ``generator`` only after the trainer's own draws)."""

    def prior_data(self) -> PriorData | None:
        """Class-prior examples for the trainer to mix into each step; ``None``: no prior loss."""
        return None

    def mlm_text_side(self) -> MLMTextSide | None:
        """The text-side learnables L_MLM regularises; the base class has none (``--mlm-lambda`` is then
        refused). Override in methods that learn token embeddings or the text encoder."""
        return None

    def encode_captions(self, captions: list[str]) -> TextBatch:
        raise NotImplementedError

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: TextBatch) -> torch.Tensor:
        raise NotImplementedError

    def export(self, path: str | Path, fingerprint: str) -> object:
        """Write the method's result to ``path``; return the loaded object (e.g. a Concept)."""
        raise NotImplementedError
