"""Which training window for Infusion's own-maps residual: ``maps=own train_t_max=w`` (trained at t < w T, added
at every sampling step) for a few w, each at the method's defaults, scored on the **validation** prompts (all 12
per concept, 2 seeds: never the test table's prompts), so that the world's default can be chosen the way the
issue asks. w = 1 is ``infusion-own`` (the table's row), w = 0.5 ``infusion-own-late-train``.

    python studies/world_train_window.py                                   # 5 concepts x w in 1, 0.7, 0.5, 0.3
    python studies/world_train_window.py --concepts sunball --windows 0.5,0.2

Writes docs/results/train_window.json and .md beside it (one table: a row per w, a column per concept and the mean).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


def window_row(w: float):
    """The table's ``Row`` for ``maps=own train_t_max=w`` (w = 1: plain ``maps=own``)."""
    from infusion.evaluation.world_results import Row

    if not 0 < w <= 1:
        raise ValueError(f"a training window must be in (0, 1], got {w}")
    args = {"maps": "own"} if w == 1 else {"maps": "own", "train_t_max": w}
    return Row(f"own-train{w:g}", "infusion", args, 0.0, ())


def markdown(result: dict) -> str:
    """{concept: {w: record}} -> one table (rows: w; columns: per concept look / text fid., and the mean)."""
    from infusion.world.concepts import CONCEPTS

    concepts = sorted(result, key=lambda c: list(CONCEPTS).index(c) if c in CONCEPTS else len(CONCEPTS))
    windows = sorted({w for c in concepts for w in result[c]}, key=float, reverse=True)
    lines = ["Produced by `python studies/world_train_window.py` (`docs/results/train_window.json`): `maps=own "
             "train_t_max=w` at Infusion's defaults, scored on every validation prompt of each concept with 2 seeds; "
             "each cell **look rate** / text fidelity / concept fidelity.", "",
             "| w | " + " | ".join(f"`<{c}>`" for c in concepts) + " | mean |", "|---|" + "---|" * (len(concepts) + 1)]
    for w in windows:
        recs = [result[c].get(w) for c in concepts]
        have = [r for r in recs if r]
        cells = [f"**{r['look_rate']:.2f}** / {r['text_fidelity']:.2f} / {r['concept_fidelity']:.2f}" if r else "-"
                 for r in recs]
        mean = {k: sum(r[k] for r in have) / len(have) for k in ("look_rate", "text_fidelity", "concept_fidelity")}
        tail = f"**{mean['look_rate']:.2f}** / {mean['text_fidelity']:.3f} / {mean['concept_fidelity']:.3f}"
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {tail}" + ("" if len(have) == len(concepts) else " (partial)") + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="sunball,slashbox,halfmug,halfstar,duotree")
    ap.add_argument("--windows", default="1,0.7,0.5,0.3", help="training windows w (fractions of T)")
    ap.add_argument("--out", default="runs/train_window", help="work folder (its own training records)")
    ap.add_argument("--json", default="docs/results/train_window.json", help="the numbers; the table goes beside it (.md)")
    args = ap.parse_args(argv)
    try:
        rows = [window_row(float(w)) for w in args.windows.split(",") if w.strip()]
    except ValueError as e:
        ap.error(f"--windows: {e}")

    import torch

    from infusion.evaluation.world_results import PRESETS, ResultsRun
    from infusion.world.concepts import get_concept, validation_prompts

    torch.set_num_threads(1)
    names = [c.strip() for c in args.concepts.split(",") if c.strip()]
    preset = replace(PRESETS["full"], val_prompts=max(len(validation_prompts(c)) for c in names), val_seeds=2)
    run = ResultsRun(args.out, preset, log=print)
    out_json = Path(args.json)
    result = json.loads(out_json.read_text()) if out_json.is_file() else {}
    for name in names:
        concept = get_concept(name)
        for row in rows:
            t0 = time.time()
            rec = run.train(row, concept, "default")
            val = run.score_validation(row, concept, rec["out"], f"window/{row.name}/{name}")
            result.setdefault(name, {})[row.name.removeprefix("own-train")] = val
            print(f"{name} {row.name}: look {val['look_rate']:.2f}, text {val['text_fidelity']:.3f}, concept "
                  f"{val['concept_fidelity']:.3f} ({val['n_images']} images, {time.time() - t0:.0f} s)", flush=True)
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    md = markdown(result)
    out_json.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
