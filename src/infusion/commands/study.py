"""``infusion study report STUDY``: Table 2 of a study people answered on the web page (its Study tab).

    infusion study report ~/concepts/studies/ballstudy                # the table, in Markdown, on stdout
    infusion study report ~/concepts/studies/ballstudy --csv t2.csv --out t2.md

The work: ``infusion.evaluation.study`` (the same rule as the probe-judged Table 2).
"""

from __future__ import annotations

from infusion.commands import HelpFormatter

HELP = "Table 2 of a blind A/B study answered on the web page"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("study", help=HELP,
                       description="Studies made in the web page's Study tab live in <library>/studies/<name>/.",
                       formatter_class=HelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    r = verbs.add_parser("report", help="per pair of entries: %% preferred for text and concept, 95%% intervals, "
                                        "answers and participants", formatter_class=HelpFormatter)
    r.add_argument("study", help="the study's folder (<library>/studies/<name>) or its study.json")
    r.add_argument("--csv", default=None, help="also write the table as CSV here")
    r.add_argument("--out", default=None, help="also write the Markdown table here")
    r.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from infusion.evaluation.study import Study, table, table_markdown, write_csv

    study = Study.load(args.study)
    rows = table(study)
    text = f"# Table 2: study {study.data['name']} ({study.data['concept']})\n\n" + table_markdown(rows)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.csv:
        write_csv(rows, args.csv)
    return 0
