"""CLI subcommands, one module each (see ``infusion.cli``)."""
