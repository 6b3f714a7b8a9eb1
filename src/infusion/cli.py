"""The ``infusion`` command line. Each subcommand lives in its own module that exposes
``register(subparsers)``; add a module to ``COMMAND_MODULES`` to add a command."""

from __future__ import annotations

import argparse
import importlib
import logging
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infusion",
        description="Customise text-to-image diffusion models without overfitting (Infusion and baselines).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:  # user errors: one clear line, no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"infusion {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
