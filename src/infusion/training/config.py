"""Training settings shared by every method (``infusion train --method ...``)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infusion.core.model_profiles import model_profile
from infusion.methods import mlm_methods

MLM_VOCABS = ("everyday", "world")  # built-in context-rich prompt sets (infusion.mlm.prompts)


@dataclass
class TrainConfig:
    """One customisation run. ``lr=None`` takes the method's default (its paper's value)."""

    model: str = field(metadata={"help": "base model: diffusers folder, single-file .safetensors, hub id, or world, tiny, "
                                         "tiny-sd2, tiny-sdxl"})
    images: str = field(metadata={"help": "folder with the concept's images (4-6 photos)"})
    name: str = field(metadata={"help": "concept name, used as <name> in prompts"})
    class_phrase: str = field(metadata={"help": "what the concept is: 'cat', 'teddy bear'"})
    out: str = field(metadata={"help": "output file (a folder for DreamBooth)"})
    method: str = field(default="infusion", metadata={"help": "customisation method"})
    steps: int = field(default=500, metadata={"help": "optimisation steps"})
    lr: float | None = field(default=None, metadata={"help": (
        "learning rate (default: the method's paper value; on --model world the world's where measured: dreambooth 1e-4)")})
    batch_size: int = field(default=4, metadata={"help": "images per step"})
    resolution: int | None = field(default=None, metadata={"help": "training resolution (default: the model's, 512 for SD1.5)"})
    seed: int = field(default=0, metadata={"help": "random seed (data order, noise, timesteps)"})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16 (accelerate)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": (
        "recompute the UNet's activations in the backward pass (diffusers' enable_gradient_checkpointing): less "
        "activation memory, more compute")})
    optimizer: str = field(default="adamw", metadata={"help": (
        "adamw | adamw8bit (bitsandbytes' 8-bit AdamW, an optional dependency: pip install bitsandbytes; "
        "untested on GPU here)")})
    checkpoint_every: int = field(default=0, metadata={"help": "write <out>-step<N> and the resume state every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=0, metadata={"help": (
        "keep only the last N <out>-step<N> outputs, removing older ones as new ones are written (0: keep all; the "
        "web page keeps 1: a DreamBooth checkpoint is a whole pipeline folder)")})
    save_state: bool = field(default=True, metadata={"help": (
        "write the resume state <out>.state.safetensors at each checkpoint, on Cancel and at the end (the web page "
        "does not: it never resumes, and DreamBooth's state is its UNet three times over: weights and two AdamW moments)")})
    resume: str | None = field(default=None, metadata={"help": "resume from this state file, or 'auto' (<out>.state.safetensors if present)"})
    flip: bool | None = field(default=None, metadata={"help": (
        "add horizontally flipped copies of the images (default: the model's profile: yes, except on the built-in "
        "world, whose concepts have a left and a right: a mirrored 'pink right half' is a pink left half)")})
    model_config: str | None = field(default=None, metadata={"help": "configs for a single-file checkpoint (local folder)"})
    method_args: dict = field(default_factory=dict, metadata={"help": "method-specific settings"})
    mlm_lambda: float = field(default=0.0, metadata={"help": (
        "weight of the diverse-context MLM regulariser, L = L_diff + lambda * L_MLM (0: off); paper: ti 1e-5..5e-5, "
        "pplus 2.5e-4, dreambooth and custom-diffusion 1e-4..1e-3")})
    mlm_prompts: str = field(default="everyday", metadata={"help": (
        "MLM prompt set: everyday | world | a UTF-8 text file, one prompt per line, each writing the concept as <name>")})
    mlm_batch: int | None = field(default=None, metadata={"help": (
        "prompts per L_MLM batch (default: the method's, as the MLM paper's authors ran them: ti 25, pplus 12, else 4)")})
    contextualizer: str | None = field(default=None, metadata={"help": (
        "pretrained contextualizer for this text encoder (infusion mlm pretrain), or 'world' (the packaged one of the "
        "built-in world model); required when --mlm-lambda > 0")})

    def __post_init__(self):
        if re.fullmatch(r"<[^<>]+>", self.name or ""):
            raise ValueError(f"--name {self.name!r}: leave out the angle brackets (--name {self.name[1:-1]}); prompts "
                             f"write it as {self.name}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-\.]*", self.name or ""):
            raise ValueError(f"--name {self.name!r}: use letters, digits, _ - . (it is written <{self.name}> in prompts)")
        if not self.class_phrase or not self.class_phrase.strip():
            raise ValueError("--class-phrase must not be empty (e.g. 'cat', 'teddy bear')")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"--resolution must be a positive multiple of 8, got {self.resolution}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"--optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.checkpoint_every < 0:
            raise ValueError("--checkpoint-every must be >= 0")
        if self.keep_checkpoints < 0:
            raise ValueError("keep_checkpoints must be >= 0 (0: keep every checkpoint)")
        if self.flip is None:
            self.flip = model_profile(self.model).flip
        self._check_mlm()

    def _check_mlm(self) -> None:
        if not (math.isfinite(self.mlm_lambda) and self.mlm_lambda >= 0):
            raise ValueError(f"--mlm-lambda must be a finite number >= 0, got {self.mlm_lambda}")
        if self.mlm_batch is not None and self.mlm_batch < 1:
            raise ValueError(f"--mlm-batch must be >= 1, got {self.mlm_batch}")
        if self.mlm_lambda == 0:
            return

        if self.method not in mlm_methods():
            raise ValueError(f"--mlm-lambda applies to methods with text-side learnables ({', '.join(mlm_methods())}); "
                             f"{self.method!r} has none: drop --mlm-lambda or pick one of those")
        if not self.contextualizer:
            raise ValueError("--mlm-lambda > 0 needs --contextualizer PATH: a contextualizer pretrained on this model's "
                             "text encoder (infusion mlm pretrain --model MODEL --captions ... --out ctx.safetensors)")
        if self.contextualizer == "world":
            from infusion.world import contextualizer_path

            self.contextualizer = str(contextualizer_path())
        if not Path(self.contextualizer).is_file():
            raise ValueError(f"--contextualizer {self.contextualizer}: no such file (make one with infusion mlm pretrain)")
        if self.mlm_prompts not in MLM_VOCABS and not Path(self.mlm_prompts).is_file():
            raise ValueError(f"--mlm-prompts {self.mlm_prompts!r}: use {' or '.join(MLM_VOCABS)}, or the path of a text "
                             f"file of prompts writing the concept as <{self.name}>")

    def to_dict(self) -> dict:
        return asdict(self)

    # where a run writes and how often it saves do not change what it learns: files leave them out, so the same
    # settings give the same file bit for bit from the CLI, the web page or a resumed run
    NOT_IN_FILES = ("out", "resume", "checkpoint_every", "keep_checkpoints", "save_state")

    def file_settings(self) -> dict:
        """The settings a trained file records in its metadata (``to_dict`` without ``NOT_IN_FILES``)."""
        return {k: v for k, v in asdict(self).items() if k not in self.NOT_IN_FILES}


def parse_method_args(pairs: list[str]) -> dict:
    """``["maps=own", "t_max=0.5"]`` (``--method-arg KEY=VALUE``, repeatable) -> ``{"maps": "own", "t_max": 0.5}``;
    a value is parsed as JSON when it can be, else kept as a string."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--method-arg expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
