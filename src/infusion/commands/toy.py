"""``infusion toy``: the paper's 2-D toy analysis of overfitting (Figs. 4-6), in minutes on a CPU."""

from __future__ import annotations

from infusion.commands import HelpFormatter

HELP = "2-D toy analysis of concept-agnostic / concept-specific overfitting"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("toy", help=HELP,
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="docs/toy", help="folder for figures, results.json and table.md")
    p.add_argument("--steps", default="0,100,400,1000,2000", help="customisation steps to evaluate (comma-separated)")
    p.add_argument("--foundation-steps", type=int, default=3000, help="pretraining steps of each foundation model")
    p.add_argument("--samples", type=int, default=1000, help="samples per concept at each evaluation")
    p.add_argument("--seed", type=int, default=0, help="seed of the foundation models and samples")
    p.set_defaults(func=run)


def run(args) -> int:
    from infusion.toy.report import run as run_toy

    try:
        steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError as e:
        raise ValueError(f"--steps must be comma-separated integers, got {args.steps!r}") from e
    if not steps or steps[0] < 0 or steps[-1] < 1:
        raise ValueError("--steps needs at least one step >= 1 (and none negative)")
    if args.foundation_steps < 1 or args.samples < 25:
        raise ValueError("--foundation-steps must be >= 1 and --samples >= 25")
    run_toy(args.out, eval_steps=steps, foundation_steps=args.foundation_steps, n_eval=args.samples, seed=args.seed)
    print(f"wrote toy figures and numbers to {args.out} (table.md, results.json, fig4/5/6, curves.png)")
    return 0
