"""CLI subcommands, one module each (see ``infusion.cli``): argument parsing only.

Each command imports the library inside its ``run`` (deferred on purpose): ``infusion --help`` and a bad argument
answer without loading torch and diffusers.
"""
