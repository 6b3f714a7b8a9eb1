"""``infusion mlm``: the diverse-context MLM regulariser's prompt set and contextualizer pretraining."""

from __future__ import annotations

import dataclasses
import logging

from infusion.commands import HelpFormatter

logger = logging.getLogger(__name__)


HELP = "diverse-context MLM regulariser: prompt set, contextualizer pretraining"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("mlm", help=HELP, formatter_class=HelpFormatter)
    mlm_sub = p.add_subparsers(dest="mlm_command", required=True, metavar="MLM_COMMAND")

    pr = mlm_sub.add_parser(
        "prompts",
        help="print context-rich prompts",
        formatter_class=HelpFormatter,
    )
    pr.add_argument("--n", type=int, default=20, help="how many distinct prompts")
    pr.add_argument("--vocab", choices=["everyday", "world"], default="everyday", help="word lists to use")
    pr.add_argument("--seed", type=int, default=0, help="sampling seed")
    pr.add_argument("--placeholder", default="<concept>", help="concept reference written into each prompt")
    pr.add_argument("--fill", default=None, metavar="TEXT",
                    help="write TEXT in place of the placeholder (e.g. a class word, to make a caption corpus)")
    pr.add_argument("--count", action="store_true", help="print the number of distinct prompts per category instead")
    pr.set_defaults(func=run_prompts)

    cp = mlm_sub.add_parser(
        "captions",
        help="print captions of the built-in world's scenes (a corpus for 'mlm pretrain')",
        formatter_class=HelpFormatter,
    )
    cp.add_argument("--n", type=int, default=20000, help="how many captions")
    cp.add_argument("--seed", type=int, default=0, help="first scene seed")
    cp.set_defaults(func=run_captions)

    from infusion.mlm.pretrain import PretrainConfig

    pt = mlm_sub.add_parser(
        "pretrain",
        help="pretrain a contextualizer for a model's text encoder",
        description="Pretrain the contextualizer + [MASK] embedding with masked language modelling on a "
        "caption corpus; the text encoder stays frozen. Interrupt any time and continue with --resume.",
        formatter_class=HelpFormatter,
    )
    pt.add_argument("--model", required=True, help="diffusers model folder (text_encoder/, tokenizer/), 'world' or 'tiny'")
    pt.add_argument("--captions", required=True, help="UTF-8 text file, one caption per line, or 'world' "
                    "(20,000 captions of the built-in world's scenes, as `infusion mlm captions` prints them)")
    pt.add_argument("--out", required=True, help="output .safetensors (checkpoint beside it: NAME.ckpt.safetensors)")
    kinds = {"steps": int, "batch_size": int, "lr": float}  # their defaults depend on the model
    for f in dataclasses.fields(PretrainConfig):
        pt.add_argument(f"--{f.name.replace('_', '-')}", type=kinds.get(f.name, type(f.default)), default=f.default,
                        help=f.metadata["help"])
    pt.add_argument("--d-model", type=int, default=None, help="contextualizer width (default: the text encoder's)")
    pt.add_argument("--layers", type=int, default=4, help="contextualizer transformer blocks")
    pt.add_argument("--heads", type=int, default=4, help="attention heads per block")
    pt.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out if there is one")
    pt.set_defaults(func=run_pretrain)


def run_prompts(args) -> int:
    from infusion.mlm.prompts import prompt_set

    pset = prompt_set(args.vocab, args.placeholder)
    if args.count:
        for c in pset.categories:
            print(f"{c}\t{pset.category_size(c)}")
        print(f"total\t{len(pset)}")
        return 0
    for prompt in pset.generate(args.n, seed=args.seed):
        print(prompt if args.fill is None else prompt.replace(args.placeholder, args.fill))
    return 0


def run_captions(args) -> int:
    from infusion.mlm.pretrain import world_captions

    for caption in world_captions(args.n, args.seed):
        print(caption)
    return 0


def run_pretrain(args) -> int:
    from infusion.mlm.contextualizer import ContextualizerConfig
    from infusion.mlm.pretrain import (
        PretrainConfig,
        load_text_side,
        pretrain_contextualizer,
        read_captions,
        world_captions,
    )

    captions = world_captions(20000) if args.captions == "world" else read_captions(args.captions)
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    config = config.for_model(args.model)
    text_encoder, tokenizer = load_text_side(args.model)
    width = text_encoder.get_input_embeddings().weight.shape[1]
    model_config = ContextualizerConfig(
        text_hidden_size=width, vocab_size=len(tokenizer), d_model=args.d_model, n_layers=args.layers, n_heads=args.heads
    )
    _, _, losses = pretrain_contextualizer(
        text_encoder, tokenizer, captions, args.out, config, model_config, resume=args.resume
    )
    if losses:
        head, tail = losses[: min(20, len(losses))], losses[-min(20, len(losses)):]
        logger.info("MLM loss %.3f (first steps) -> %.3f (last steps)", sum(head) / len(head), sum(tail) / len(tail))
    logger.info("wrote %s", args.out)
    return 0
