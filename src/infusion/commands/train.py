"""``infusion train``: customise a base model on a folder of concept images."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from infusion.commands import HelpFormatter

logger = logging.getLogger(__name__)


HELP = "learn a concept from a few images"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help=HELP,
        description="Learn a personal concept. Multi-GPU: `accelerate launch -m infusion.cli train ...`.",
        epilog="example: infusion train --model stable-diffusion-v1-5/stable-diffusion-v1-5 --images photos/ "
               "--name mycat --class-phrase cat --out mycat.safetensors  (then: infusion generate ... "
               "--prompt 'a photo of <mycat> on the beach')",
        formatter_class=HelpFormatter,
    )
    from infusion.methods import available_methods
    from infusion.training.config import TrainConfig

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    p.add_argument("--model", required=True, help=helps["model"])
    p.add_argument("--images", required=True, help=helps["images"])
    p.add_argument("--name", required=True, help=helps["name"])
    p.add_argument("--class-phrase", required=True, help=helps["class_phrase"])
    from infusion.methods import get_method

    out_help = "; ".join(f"{m}: {get_method(m).out_help}" for m in available_methods())
    p.add_argument("--out", required=True, help=f"output, per method: {out_help}")
    p.add_argument("--method", default="infusion", choices=available_methods(), help=helps["method"])
    p.add_argument("--steps", type=int, default=500, help=helps["steps"])
    p.add_argument("--lr", type=float, default=None, help=helps["lr"])
    p.add_argument("--batch-size", type=int, default=4, help=helps["batch_size"])
    p.add_argument("--resolution", type=int, default=None, help=helps["resolution"])
    p.add_argument("--seed", type=int, default=0, help=helps["seed"])
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help=helps["mixed_precision"])
    p.add_argument("--gradient-checkpointing", action="store_true", help=helps["gradient_checkpointing"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit"], help=helps["optimizer"])
    p.add_argument("--checkpoint-every", type=int, default=0, help=helps["checkpoint_every"])
    p.add_argument("--resume", nargs="?", const="auto", default=None, help=helps["resume"])
    p.add_argument("--flip", dest="flip", action="store_true", default=None, help=helps["flip"])
    p.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="do not add mirrored copies")
    p.add_argument("--model-config", default=None, help=helps["model_config"])
    from infusion.methods import mlm_methods

    needs = {"dreambooth": " (with --method-arg train_text_encoder=true)"}  # its MLM term is on the text encoder
    g = p.add_argument_group("diverse-context MLM regulariser",
                             f"methods: {', '.join(m + needs.get(m, '') for m in mlm_methods())}")
    g.add_argument("--mlm-lambda", type=float, default=0.0, help=helps["mlm_lambda"])
    g.add_argument("--mlm-prompts", default="everyday", metavar="everyday|world|FILE", help=helps["mlm_prompts"])
    g.add_argument("--mlm-batch", type=int, default=None, help=helps["mlm_batch"])
    g.add_argument("--contextualizer", default=None, metavar="PATH", help=helps["contextualizer"])
    arg_help = "; ".join(f"{m}: " + ", ".join(f"{k} ({h})" for k, h in get_method(m).method_args_help.items())
                         for m in available_methods() if get_method(m).method_args_help)
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="method-specific setting (repeatable), value parsed as JSON when possible. " + arg_help)
    p.set_defaults(func=run)


def run(args) -> int:
    from infusion.training import TrainConfig, train
    from infusion.training.config import parse_method_args

    cfg = TrainConfig(
        model=args.model, images=args.images, name=args.name, class_phrase=args.class_phrase, out=args.out,
        method=args.method, steps=args.steps, lr=args.lr, batch_size=args.batch_size, resolution=args.resolution,
        seed=args.seed, mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        optimizer=args.optimizer,
        checkpoint_every=args.checkpoint_every, resume=args.resume, flip=args.flip, model_config=args.model_config,
        method_args=parse_method_args(args.method_arg), mlm_lambda=args.mlm_lambda, mlm_prompts=args.mlm_prompts,
        mlm_batch=args.mlm_batch,
        contextualizer=args.contextualizer,
    )
    from infusion.methods import get_method

    method = get_method(cfg.method)
    unknown = method.unknown_method_args(cfg.method_args)
    if unknown:  # a typo would train with the default silently (the Python API warns; the page refuses too)
        known = ", ".join(sorted(method.method_args_help or {})) or "none"
        raise ValueError(f"--method-arg {', '.join(unknown)}: {cfg.method} has no such setting; it reads: {known}")
    train(cfg)
    print(f"wrote {Path(cfg.out)}")
    return 0
