"""CLI subcommands, one module each (see ``infusion.cli``): argument parsing only.

Each command imports the library inside its ``run`` (deferred on purpose): ``infusion --help`` and a bad argument
answer without loading torch and diffusers.
"""

import argparse
import textwrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, but not for a required option, one without a default ("default: None"
    says nothing; such an option's help says what happens when it is left out), a repeatable option's empty list or
    a switch's False; lines never break at a hyphen."""

    def _fill_text(self, text, width, indent):  # options such as --num-images are never broken at their hyphen
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False,
                             break_long_words=False)

    def _split_lines(self, text, width):
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False,
                             break_long_words=False)

    def _get_help_string(self, action):
        if (action.required or action.default is None or action.default is argparse.SUPPRESS
                or action.default == [] or (action.default is False and action.nargs == 0)):
            return action.help
        return super()._get_help_string(action)
