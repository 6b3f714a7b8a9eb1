"""The ``infusion`` command line. Each subcommand lives in its own module that exposes
``register(subparsers)``; add a module to ``COMMAND_MODULES`` to add a command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMAND_MODULES = [
    "infusion.commands.train",
    "infusion.commands.mlm",
    "infusion.commands.generate",
    "infusion.commands.merge",
    "infusion.commands.demo",
    "infusion.commands.world",
    "infusion.commands.evaluate",
    "infusion.commands.results",
    "infusion.commands.toy",
    "infusion.commands.app",
    "infusion.commands.study",
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser. With ``argv`` naming a command, only that command's options are built (a command's ``register``
    may import torch and every method); the others, and ``infusion --help``, get their one line (``HELP``) only."""
    parser = argparse.ArgumentParser(
        prog="infusion",
        description="Customise text-to-image diffusion models without overfitting (Infusion and baselines).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {mod.rsplit(".", 1)[-1]: mod for mod in COMMAND_MODULES}
    wanted = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, mod in modules.items():
        module = importlib.import_module(mod)
        if argv is None or name == wanted:
            module.register(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not sys.stderr.isatty():  # CI logs and nohup files: every progress bar (diffusers' too) a line per 30 s, not
        os.environ.setdefault("TQDM_MININTERVAL", "30")  # per step; tqdm reads it when first imported, i.e. below
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError, KeyError) as e:  # user errors (and the environment's): one line
        logging.getLogger(__name__).debug("infusion %s failed", args.command, exc_info=True)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"infusion {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
