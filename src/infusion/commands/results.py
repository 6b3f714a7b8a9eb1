"""``infusion results``: the paper's evaluation on the built-in world, one resumable command -> docs/results.md.

    infusion results --workers 2           # Tables 1-2 and Fig. 7 (resumes from the records and docs/results/results.json)
    infusion results --stage figures --workers 2   # Figs. 9-11: W2 and LFD against training steps, images at steps
    infusion results --stage fig8          # Fig. 8: two concepts in one prompt
    infusion results --report-only         # rewrite the page from the records so far
    infusion results --preset small --model tiny --out /tmp/r --doc /tmp/r/results.md   # plumbing

The work and the page: ``infusion.evaluation.results_page`` (options: its ``add_arguments``).
"""

from __future__ import annotations

from infusion.commands import HelpFormatter

HELP = "the paper's evaluation on the built-in world (resumable) -> docs/results.md"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    from infusion.evaluation.results_page import DESCRIPTION, add_arguments

    p = sub.add_parser("results", help=HELP,
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from infusion.evaluation.results_page import run_results

    return run_results(preset=args.preset, model=args.model, out=args.out, doc=args.doc, workers=args.workers,
                       report_only=args.report_only, stage=args.stage)
