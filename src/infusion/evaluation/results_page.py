"""The results page: every method side by side on the built-in world, one resumable command -> docs/results.md.

    infusion results                       # the full run (resumes; two processes: add --workers 2)
    infusion results --report-only         # rewrite the doc from the records so far
    infusion results --preset small --model tiny --out /tmp/r --doc /tmp/r/results.md   # plumbing

Work (``infusion.evaluation.world_results``): per concept and row, defaults as ``infusion train`` gives
them, a learning-rate x steps sweep scored on validation prompts, the chosen point scored on the test
prompts; then training curves. Every finished unit is a record; the records are also written into the
results JSON beside the doc, and a later run (another session, a fresh clone) starts from that JSON, so
only what is missing is trained and scored. This module turns the records into the page (tables, curve
figures, grids, the readings of the papers' claims); the page opens with the research readings in
``docs/research/world_results_readings.md`` and the studies' sections in ``docs/results/*.md``
(``studies/README.md``).

``infusion results`` (``infusion.commands.results``) registers ``add_arguments`` and calls ``run_results``;
``main(argv)`` is the same command as a function.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import signal
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from infusion.core.images import make_grid
from infusion.evaluation.world_figures import FIGURE_PLANS, FigureRun, draw_curves, draw_fig11
from infusion.evaluation.world_results import (
    BASE_ROW,
    PAPER_ROW,
    PRESETS,
    Records,
    ResultsRun,
    grid_prompts,
    model_fingerprint,
)
from infusion.methods import mlm_methods
from infusion.world.concepts import concept_images

DESCRIPTION = "Every method side by side on the built-in world: one resumable command -> docs/results.md."
NOTES = Path("docs") / "research" / "world_results_readings.md"  # research readings the page opens with

METRICS = (  # key, header, format, better
    ("look_rate", "look rate", "{:.2f}", "high"),
    ("concept_fidelity", "concept fid.", "{:.3f}", "high"),
    ("text_fidelity", "text fid. (with concept)", "{:.3f}", "high"),
    ("agnostic_text_fidelity", "text fid. (without)", "{:.3f}", "high"),
    ("class_leak", "class leak", "{:.2f}", "low"),
    ("background_leak", "bg leak", "{:.2f}", "low"),
    ("position_obedience", "position", "{:.2f}", "high"),
    ("size_obedience", "size", "{:.2f}", "high"),
    ("diversity_background_bits", "bg entropy (bits)", "{:.2f}", "high"),
    ("diversity_position_bits", "pos. entropy (bits)", "{:.2f}", "high"),
    ("diversity_look_rate", "look, bare prompt", "{:.2f}", "high"),
    ("lfd", "LFD", "{:.4f}", "low"),
    ("w2_to_base", "W2 to base", "{:.2f}", "low"),
)
COST = (
    ("trainable_parameters", "trainable params", "{:,.0f}"),
    ("file_bytes", "file bytes", "{:,.0f}"),
    ("seconds_per_step", "s / step", "{:.3f}"),
    ("seconds_per_image", "s / image", "{:.3f}"),
    ("steps", "steps", "{:.0f}"),
    ("lr", "lr", "{:g}"),
)


def _worker(preset_name: str, model: str | None, out: str, curves_first: bool, figures: str | None = None,
            images: str | None = None) -> None:
    """One process's share of the work list (the records say what is done; processes share them); ``figures``: the
    folder of the figure records (the figures stage instead of the table); ``images``: the folder of the table's
    per-image records."""
    torch.set_num_threads(1)
    preset = PRESETS[preset_name]
    if model:
        preset.model = model
    run = ResultsRun(out, preset, log=lambda m: print(m, flush=True), image_records=images)
    if figures is None:
        run.run(curves_first=curves_first)
    else:
        fr = FigureRun(run, FIGURE_PLANS[preset_name], figures)
        run.run(units=fr.units(), handlers={"figures": fr.unit})


def figures_dir(doc: Path) -> Path:
    """Where the figure stage's records go: beside the page's figures, committed with them."""
    return doc.parent / "results" / "records" / "figures"


def run_figures(preset: str, model: str | None, out: Path, doc: Path, workers: int, report_only: bool) -> int:
    """The figures stage: Figs. 9-11 (``evaluation.world_figures``) from its records, training and scoring what they
    lack first unless ``report_only``."""
    plan, records = FIGURE_PLANS[preset], figures_dir(doc)
    if not report_only:
        own_work_folder(out, model_fingerprint(model or PRESETS[preset].model))
        args = (preset, model, str(out), False, str(records))
        if workers <= 1:
            _worker(*args)
        else:
            procs = [mp.get_context("spawn").Process(target=_worker, args=args, daemon=True) for _ in range(workers)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
    fig_dir = doc.parent / "results"
    written = draw_curves(records, plan, fig_dir, PRESETS[preset].test_seeds) + draw_fig11(records, plan, fig_dir)
    for path in written:
        print(f"wrote {path}")
    return 0


def seed_records(out: Path, results_json: Path, fingerprint: str) -> int:
    """Records from a committed results JSON that the work folder lacks (resume across sessions), if they were
    measured on this model (``fingerprint``); records of another model are not used."""
    if not results_json.is_file():
        return 0
    data = json.loads(results_json.read_text())
    if data.get("model_fingerprint") != fingerprint:
        print(f"{results_json}: records of model {data.get('model_fingerprint')}, this is {fingerprint}: not resumed")
        return 0
    have = Records(out)
    n = 0
    for key, value in data.get("records", {}).items():
        # train/ records are kept too (configs, seconds, sizes: the JSON stays complete); their outputs are not
        # committed, and Runner.train trains again when a record's output is missing
        if have.get(key) is None:
            have.put(key, value)
            n += 1
    return n


def _fmt(fmt: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v + 0.0 if isinstance(v, float) else v)  # + 0.0: no "-0.00"


def _mean(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def own_work_folder(out: Path, fingerprint: str) -> None:
    """Move the records of another model aside (``out/records-<fingerprint>``): a retrained model starts afresh."""
    mark = out / "model_fingerprint.txt"
    old = mark.read_text().strip() if mark.is_file() else None
    if old != fingerprint and (out / "records").is_dir() and any((out / "records").iterdir()):
        (out / "records").rename(out / f"records-{old or 'unknown'}")
        print(f"{out}/records were measured on model {old}: moved aside")
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(fingerprint + "\n")


def build_report(out: Path, preset, doc: Path, wall: list, fingerprint: str) -> dict:
    """Tables, curve figures and grids from the records -> ``doc`` and its JSON; returns the JSON."""
    rec = Records(out).all()
    rows = [BASE_ROW] + [r.name for r in preset.rows]
    settings = {BASE_ROW: ["base"]}
    per_concept = {}  # (row, setting) -> {concept: record}
    for row in rows:
        for setting in settings.get(row, ["default", "tuned"]):
            have = {c: rec[f"test/{row}/{c}/{setting}"] for c in preset.concepts if rec.get(f"test/{row}/{c}/{setting}")}
            if have:
                per_concept[(row, setting)] = have
    # the main table averages over the concepts every started row has finished, so that rows compare like with like
    # (a row with no record yet, e.g. one added to the preset during a run, waits below the table)
    started = [r for r in rows if any(r == k[0] for k in per_concept)]
    complete = [c for c in preset.concepts if all(c in per_concept.get((r, s), {}) for r in started
                                                  for s in settings.get(r, ["default", "tuned"]))]
    table = {}
    keys = [m[0] for m in METRICS] + [m[0] for m in COST]
    for key, have in per_concept.items():
        use = [have[c] for c in complete if c in have]
        if use:
            table[key] = {k: _mean([v.get(k) for v in use]) for k in keys}
            table[key]["n_concepts"] = len(use)
    doc.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = doc.parent / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    curves = _curve_figures(rec, preset, fig_dir)
    grids = _grids(out, preset, fig_dir, rec)
    lines = _doc(preset, table, per_concept, curves, grids, wall, rec, doc, complete, fingerprint)
    doc.write_text("\n".join(lines) + "\n")
    data = {"preset": preset.__class__.__name__, "model": preset.model, "model_fingerprint": fingerprint,
            "wall_seconds": wall, "complete_concepts": complete,
            "table": {f"{r}/{s}": v for (r, s), v in table.items()},
            "per_concept": {f"{r}/{s}": v for (r, s), v in per_concept.items()},
            "records": rec}
    (fig_dir / "results.json").write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    readme = doc.parent.parent / "README.md"
    if readme.is_file() and "<!-- headline -->" in readme.read_text():
        _headline(readme, preset, table, per_concept, complete)
    return data


def _headline(readme: Path, preset, table: dict, per_concept: dict, complete: list) -> None:
    """The README's short table (tuned rows) between ``<!-- headline -->`` and ``<!-- /headline -->``."""
    if complete:
        src, what = table, f"mean over {', '.join(complete)}"
    else:  # no concept complete yet: the first concept, whatever rows it has
        c = preset.concepts[0]
        src = {k: v[c] for k, v in per_concept.items() if c in v}
        what = f"<{c}> only, rows done so far"
    cols = (("look_rate", "look rate", "{:.2f}"), ("concept_fidelity", "concept fid.", "{:.3f}"),
            ("text_fidelity", "text fid. with concept", "{:.3f}"), ("agnostic_text_fidelity", "without", "{:.3f}"),
            ("lfd", "LFD", "{:.4f}"))
    lines = ["<!-- headline -->", f"Tuned settings, {what} ([docs/results.md](docs/results.md)):", "",
             "| | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for (row, setting), v in src.items():
        if setting in ("tuned", "base"):
            lines.append(f"| {row if row != BASE_ROW else 'base model'} | " + " | ".join(_fmt(c[2], v.get(c[0])) for c in cols) + " |")
    text = readme.read_text()
    head, close = "<!-- headline -->", "<!-- /headline -->"
    start = text.index(head)
    end = text.index(close) + len(close) if close in text else start + len(head)
    readme.write_text(text[:start] + "\n".join(lines) + "\n" + close + text[end:])


def _curve_figures(rec: dict, preset, fig_dir: Path) -> list[str]:
    # deferred: matplotlib is slow to import and needs its file backend chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, label in (("text_fidelity", "text fidelity (test prompts with the concept)"),
                       ("look_rate", "look rate"), ("agnostic_text_fidelity", "text fidelity (prompts without the concept)")):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = 0
        for row in preset.rows:
            pts = sorted((v["step"], v[key]) for k, v in rec.items()
                         if k.startswith(f"curve/{row.name}/{preset.curve_concept}/step"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=row.name)
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.set_title(f"<{preset.curve_concept}>: {label}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = f"curve_{key}.png"
        fig.savefig(fig_dir / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _grids(out: Path, preset, fig_dir: Path, rec: dict | None = None) -> list[str]:
    """One picture per concept from the grid images in ``out``. A grid images are missing for (another session
    drew them, only their records came with the JSON) is not redrawn over the committed picture."""
    files = []
    for c in preset.concepts:
        d = out / "grids" / c
        if not d.is_dir():
            if (fig_dir / f"grid_{c}.png").is_file():
                files.append(f"grid_{c}.png")  # drawn by another session
            continue
        cols = ["base"] + [r.name for r in preset.rows]
        present = [col for col in cols if (d / f"{col}-00.png").is_file()]
        scored = [col for col in cols if rec is not None and (rec.get(f"test/{col}/{c}/tuned") or rec.get(f"test/{col}/{c}/base"))]
        if (fig_dir / f"grid_{c}.png").is_file() and not set(scored) <= set(present):
            files.append(f"grid_{c}.png")  # keep the picture drawn where all its images were
            continue
        prompts = grid_prompts(c, preset, 4)
        rows = []
        for i in range(len(prompts)):
            rows.append([Image.open(d / f"{col}-{i:02d}.png").resize((64, 64), Image.NEAREST)
                         if (d / f"{col}-{i:02d}.png").is_file() else Image.new("RGB", (64, 64), "white") for col in present])
        refs = [im.resize((64, 64), Image.NEAREST) for im in concept_images(c)]
        rows.append(refs + [Image.new("RGB", (64, 64), "white")] * (len(present) - len(refs)))
        make_grid(rows, present, prompts + ["training images"], cell=64).save(fig_dir / f"grid_{c}.png")
        files.append(f"grid_{c}.png")
    return files


def _doc(preset, table, per_concept, curves, grids, wall, rec, doc: Path, complete: list, fingerprint: str = "") -> list[str]:
    notes = notes_file(doc)
    n_done = sum(1 for k in rec if k.startswith("done/"))
    unstarted = [r.name for r in preset.rows if not any(k[0] == r.name for k in per_concept)]
    n_units = len(preset.concepts) * (len(preset.rows) + 1) + sum(1 for r in preset.rows if r.mlm_lambda == 0)
    lines = ["# Every method side by side on the built-in world", "",
             "Produced by `infusion results` (resumable; `--report-only` rewrites this page from the "
             f"records). Model: `{preset.model}`" + (f" (weights fingerprint `{fingerprint}`)" if fingerprint else "") + f". Concepts: {', '.join(preset.concepts)}. Work units done: "
             f"**{n_done} of {n_units}**" + (" (the rest: the next run resumes them)." if n_done < n_units else "."),
             "Wall time of the runs that wrote these records: "
             + (", ".join(f"{w['started']}: {w['seconds'] / 60:.0f} min ({w['workers']} processes)" for w in wall) or "-")
             + f"; total {sum(w['seconds'] for w in wall) / 60:.0f} min on a 2-core CPU (processes beyond two shared the cores).", ""]
    if notes is not None:
        lines += [notes.read_text().strip(), ""]
    for title, name in (("The look rate, checked on renders first", "look_validation.md"),
                        ("Is the world fair? Can a method learn a concept's look here at all?", "fairness.md"),
                        ("Where the look-rate gap to the best baseline is: per prompt kind", "look_gap.md")):
        part = doc.parent / "results" / name
        if part.is_file():
            lines += [f"## {title}", "", part.read_text().strip(), ""]
    lines += ["## Table", "",
              f"Mean over the concepts every row has finished: **{', '.join(complete) or 'none yet'}** (the others, "
              "partly done, are in the per-concept tables below)."
              + (f" Rows not started yet: {', '.join(unstarted)}." if unstarted else ""), "",
              "`default`: `infusion train --model world --method M` as a new user runs it. `tuned`: the best point of "
              "the sweep on validation prompts (never the test prompts; `selection_score` = look rate + text fidelity "
              "+ concept fidelity / 10). Test: 22 held-out prompts x "
              f"{preset.test_seeds} seeds per concept, DDIM {preset.ddim_steps} steps, guidance {preset.guidance}.", ""]
    head = ["row", "setting", "n"] + [m[1] for m in METRICS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (row, setting), v in table.items():
        lines.append("| " + " | ".join([row, setting, str(v["n_concepts"])] + [_fmt(m[2], v.get(m[0])) for m in METRICS]) + " |")
    lines += ["", "### Cost", "", "| row | setting | " + " | ".join(c[1] for c in COST) + " |", "|" + "---|" * (len(COST) + 2)]
    for (row, setting), v in table.items():
        if row != BASE_ROW:
            lines.append(f"| {row} | {setting} | " + " | ".join(_fmt(c[2], v.get(c[0])) for c in COST) + " |")
    lines += ["", "## Curves (paper Figs. 9, 10)", "",
              f"`<{preset.curve_concept}>`, each row at its tuned learning rate, a checkpoint every {preset.curve_every} "
              f"steps to {preset.curve_steps}; {preset.curve_prompts} test prompts and {preset.agnostic_prompts} prompts "
              "without the concept per point.", ""]
    lines += [f"![{c}](results/{c})" for c in curves] or ["(no curve recorded yet)"]
    lines += ["", "## Pictures (paper Fig. 11)", "",
              "Columns: the base model, then each row at its tuned setting; rows: test prompts (seed 0); last row: the "
              "training images.", ""]
    lines += [f"![{g}](results/{g})" for g in grids] or ["(no grid yet)"]
    lines += ["", "## Per concept", ""]
    for c in preset.concepts:
        rows = [(k, v[c]) for k, v in per_concept.items() if c in v]
        if not rows:
            continue
        lines += [f"### {c}", "", "| row | setting | " + " | ".join(m[1] for m in METRICS) + " | steps | lr |",
                  "|" + "---|" * (len(METRICS) + 4)]
        for (row, setting), v in rows:
            lines.append(f"| {row} | {setting} | " + " | ".join(_fmt(m[2], v.get(m[0])) for m in METRICS)
                         + f" | {_fmt('{:.0f}', v.get('steps'))} | {_fmt('{:g}', v.get('lr'))} |")
        lines.append("")
    if complete:
        lines += _readings(table, rec, preset, complete)
    else:  # no concept complete yet: read the first concept's finished rows, and say so
        first = preset.concepts[0]
        partial = {k: v[first] for k, v in per_concept.items() if first in v}
        lines += _readings(partial, rec, preset, [f"{first} only (the rows finished so far; no concept is complete)"])
    lines += _definitions()
    return lines


def goal_lines(tuned: dict, base: dict, methods: list[str]) -> list[str]:
    """The comparison issue's goal per Infusion row (the paper's and each variant): look rate and concept fidelity at
    least the best baseline's (the rows not named infusion*), text fidelity within 0.01 of the base model's."""
    baselines = [r for r in methods if not r.startswith("infusion")]
    if not baselines:
        return []
    look = max((tuned[r]["look_rate"], r) for r in baselines)
    fid = max((tuned[r]["concept_fidelity"], r) for r in baselines)
    out = []
    for r in [r for r in methods if r.startswith("infusion")]:
        v = tuned[r]
        ok = (v["look_rate"] >= look[0], v["concept_fidelity"] >= fid[0], v["text_fidelity"] >= base["text_fidelity"] - 0.01)
        who = "Infusion's" if r == PAPER_ROW else f"`{r}`'s (beyond the paper)"
        verdict = "holds" if all(ok) else "does not hold"
        out.append(f"  {who} look rate {v['look_rate']:.2f} vs the best baseline's {look[0]:.2f} ({look[1]}), concept "
                   f"fidelity {v['concept_fidelity']:.3f} vs {fid[0]:.3f} ({fid[1]}), text fidelity {v['text_fidelity']:.3f} "
                   f"vs base {base['text_fidelity']:.3f}: the goal **{verdict}** here"
                   + ("" if all(ok) else f" (short on {', '.join(n for n, o in zip(('look', 'concept fidelity', 'text fidelity'), ok) if not o)})")
                   + ".")
    return out


def _readings(table: dict, rec: dict, preset, complete: list) -> list[str]:
    """Each paper claim, checked against the numbers above (stated, not interpreted beyond the numbers)."""
    out = ["## Readings: does the world reproduce the papers' claims?", ""]
    tuned = {r: v for (r, s), v in table.items() if s == "tuned"}
    base = table.get((BASE_ROW, "base"))
    if not tuned or base is None:
        return out + ["No concept is complete yet: no reading.", ""]
    methods = [r for r in tuned if "+mlm" not in r]
    by = lambda k: sorted(methods, key=lambda r: -(tuned[r].get(k) or 0))  # noqa: E731
    out.append(f"On {', '.join(complete)} (tuned settings):")
    out.append("")
    out.append("- **Table 1 (Infusion: the best text fidelity at a competitive concept fidelity).** Text fidelity, best "
               "first: " + ", ".join(f"{r} {tuned[r]['text_fidelity']:.3f}" for r in by("text_fidelity"))
               + f" (base {base['text_fidelity']:.3f}). Concept fidelity: "
               + ", ".join(f"{r} {tuned[r]['concept_fidelity']:.3f}" for r in by("concept_fidelity"))
               + f" (base {base['concept_fidelity']:.3f}). Look rate: "
               + ", ".join(f"{r} {tuned[r]['look_rate']:.2f}" for r in by("look_rate")) + ".")
    out += goal_lines(tuned, base, methods)
    curves = {}
    for row in preset.rows:
        pts = sorted((v["step"], v) for k, v in rec.items() if k.startswith(f"curve/{row.name}/{preset.curve_concept}/step"))
        if len(pts) >= 10:
            curves[row.name] = pts
    if curves:
        def span(pts, k):
            n = max(1, len(pts) // 4)
            return sum(v[k] for _, v in pts[:n]) / n, sum(v[k] for _, v in pts[-n:]) / n

        out.append("- **Figs. 9, 10 (the baselines' prompt fidelity decays with training, Infusion's holds).** Text "
                   f"fidelity, first quarter -> last quarter of the curve on <{preset.curve_concept}>: "
                   + ", ".join(f"{r} {span(p, 'text_fidelity')[0]:.2f} -> {span(p, 'text_fidelity')[1]:.2f}" for r, p in curves.items())
                   + "; without the concept: "
                   + ", ".join(f"{r} {span(p, 'agnostic_text_fidelity')[0]:.2f} -> {span(p, 'agnostic_text_fidelity')[1]:.2f}"
                               for r, p in curves.items()) + ".")
        drop = lambda p: span(p, "text_fidelity")[0] - span(p, "text_fidelity")[1]  # noqa: E731
        decayed = [r for r, p in curves.items() if not r.startswith("infusion") and drop(p) > 0.02]
        others = [r for r in curves if not r.startswith("infusion")]
        if PAPER_ROW in curves:
            holds = abs(drop(curves[PAPER_ROW])) <= 0.01
            out.append(f"  Text fidelity falls by more than 0.02 for {len(decayed)} of {len(others)} baselines "
                       f"({', '.join(decayed) or 'none'}); Infusion's {'holds' if holds else 'moves'} "
                       f"({drop(curves[PAPER_ROW]):+.2f}): the claim **{'holds' if holds and decayed else 'does not hold'}"
                       f"**{' for those baselines' if holds and len(decayed) < len(others) else ''} on this concept.")
    pairs = [(r, f"{r}+mlm") for r in mlm_methods() if r in tuned and f"{r}+mlm" in tuned]
    if pairs:
        out.append("- **MLM paper (CLIP-T up, DINO down with the regulariser).** Text fidelity / concept fidelity, without -> "
                   "with L_MLM: " + "; ".join(
                       f"{a} {tuned[a]['text_fidelity']:.3f} -> {tuned[b]['text_fidelity']:.3f} / "
                       f"{tuned[a]['concept_fidelity']:.3f} -> {tuned[b]['concept_fidelity']:.3f}" for a, b in pairs) + ".")
        agree = [a for a, b in pairs if tuned[b]["text_fidelity"] > tuned[a]["text_fidelity"]
                 and tuned[b]["concept_fidelity"] < tuned[a]["concept_fidelity"]]
        out.append(f"  Text fidelity up and concept fidelity down together for {len(agree)} of {len(pairs)} methods "
                   f"({', '.join(agree) or 'none'}): the claim **{'holds' if len(agree) == len(pairs) else 'does not hold' if not agree else 'holds in part'}** here.")
    lfd = {r: tuned[r]["lfd"] for r in methods if tuned[r].get("lfd") is not None}
    if lfd:
        out.append("- **Concept-agnostic overfitting (LFD, Def. 3.1).** " + ", ".join(f"{r} {v:.4f}" for r, v in sorted(lfd.items(), key=lambda x: x[1]))
                   + ": Infusion's is exactly 0 by construction.")
    return out + [""]


def _definitions() -> list[str]:
    return ["## Definitions", "",
            "- **look rate**: share of generated concept objects whose colour, pattern and second colour the object "
            "probe reads as the concept's (the object is read where the scene probe finds the concept's class; "
            "validated on renders: see the notes above).",
            "- **concept fidelity** (DINO-I's role): cosine between the object probe's embedding of the generated object "
            "and the mean embedding of the training images' objects.",
            "- **text fidelity** (CLIP-T's role): share of the attributes a prompt names (background; class, colour, "
            "size, position of each object) that the scene probe reads in the image; *with concept*: the test prompts; "
            "*without*: prompts naming other classes and the concept's class without its placeholder.",
            "- **class leak** (DreamBooth's language drift): share of the plain `<class>` prompts whose object takes the "
            "concept's look.",
            "- **bg leak**: share of test prompts naming another background whose image shows the training background.",
            "- **position / size**: share of named positions / sizes obeyed on the test prompts.",
            "- **bg / pos. entropy**: entropy (bits) of the background and of the concept's slot over seeds of the bare "
            "prompt \"a photo of a <c>\" (max 3.00 / 2.32); **look, bare prompt**: its look rate.",
            "- **LFD**: latent Fisher divergence (DESIGN 5) between base and customised model on real world latents of "
            "non-customised captions (v-prediction converted to eps). **W2 to base**: Frechet distance between Gaussians "
            "fitted to the customised and the base model's test latents (same prompts and seeds; pooled as "
            "`metrics.wasserstein`).",
            "- **s / step** includes each run's start-up (model loading, prior images); **s / image** is DDIM "
            "with CFG at the table's settings, one process on one core.", ""]


def notes_file(doc: Path) -> Path | None:
    """The research readings the page opens with (``NOTES``): from the checkout the page is written in (``doc``'s
    ``docs`` folder), else from the source checkout this module runs from; None when neither has them."""
    for root in (Path(doc).parent.parent, *Path(__file__).resolve().parents):
        if (root / NOTES).is_file():
            return root / NOTES
    return None


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The command's options (``infusion results`` and ``main``)."""
    ap.add_argument("--preset", default="full", choices=["full", "small"])
    ap.add_argument("--model", default=None, help="override the preset's model (e.g. tiny, or a world snapshot folder)")
    ap.add_argument("--out", default="runs/results_world", help="work folder (training outputs, records, images)")
    ap.add_argument("--doc", default="docs/results.md", help="the page to write; its figures and JSON go beside it in results/")
    ap.add_argument("--workers", type=int, default=1, help="processes (one per core; they share the work list)")
    ap.add_argument("--curves-first", action="store_true", help="the first worker starts with the curves")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the doc from the records")
    ap.add_argument("--stage", default="table", choices=["table", "figures", "fig8"],
                    help="table: the Table 1 analogue and its page; figures: Figs. 9-11 (W2 and LFD against training "
                         "steps, images at steps), records in <doc folder>/results/records/figures/; fig8: Fig. 8 "
                         "(two concepts in one prompt, Infusion against Custom Diffusion's merge; one process), "
                         "records in <doc folder>/results/records/fig8/")


def run_results(preset: str = "full", model: str | None = None, out: str = "runs/results_world",
                doc: str = "docs/results.md", workers: int = 1, curves_first: bool = False,
                report_only: bool = False, stage: str = "table") -> int:
    """Train and score what the records lack (``workers`` processes), then write the page ``doc``, its figures and
    its JSON (``doc``'s folder/results/); ``report_only``: only the page, from the records so far. ``stage``
    ``figures``: Figs. 9-11 instead (``run_figures``)."""
    if stage == "figures":
        return run_figures(preset, model, Path(out), Path(doc), workers, report_only)
    if stage == "fig8":  # Fig. 8 (evaluation.world_fig8), one process
        from infusion.evaluation.world_fig8 import run_fig8

        return run_fig8(preset, model, Path(out), Path(doc), report_only)
    preset_name = preset
    preset = PRESETS[preset_name]
    if model:
        preset.model = model
    out, doc = Path(out), Path(doc)
    results_json = doc.parent / "results" / "results.json"
    fingerprint = model_fingerprint(preset.model)
    committed = json.loads(results_json.read_text()) if results_json.is_file() else {}
    if report_only:  # the page reports the records' model, which may not be the model installed now
        mark = out / "model_fingerprint.txt"
        measured = mark.read_text().strip() if mark.is_file() else committed.get("model_fingerprint", fingerprint)
        if measured != fingerprint:
            print(f"the records were measured on model {measured}, not on the installed {fingerprint}: "
                  f"the page reports them as model {measured}'s; a full run starts the installed model's afresh")
        fingerprint = measured
    # the wall time belongs to the records: a retrained model's run starts its own
    wall = committed.get("wall_seconds", []) if committed.get("model_fingerprint") == fingerprint else []
    if isinstance(wall, dict):  # an older layout: {start: seconds}
        wall = [{"started": k, "seconds": v, "workers": 2} for k, v in wall.items()]
    if not report_only:
        own_work_folder(out, fingerprint)
        n = seed_records(out, results_json, fingerprint)
        if n:
            print(f"resuming: {n} records from {results_json}")
        t0 = time.time()
        images = str(doc.parent / "results" / "records" / "table")
        if workers <= 1:
            _worker(preset_name, model, str(out), curves_first, None, images)
        else:
            procs = [mp.get_context("spawn").Process(target=_worker, daemon=True,
                                                     args=(preset_name, model, str(out), curves_first and k == 0, None, images))
                     for k in range(workers)]
            for p in procs:
                p.start()

            def stop(signum, frame):  # `kill` of this process stops its workers too
                for p in procs:
                    p.terminate()
                sys.exit(128 + signum)

            signal.signal(signal.SIGTERM, stop)
            for p in procs:
                p.join()
        wall.append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)), "seconds": time.time() - t0,
                     "workers": workers})
    build_report(out, preset, doc, wall, fingerprint)
    print(f"wrote {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``infusion results ARGV`` as a function (scripts, tests)."""
    ap = argparse.ArgumentParser(prog="infusion results", description=DESCRIPTION,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(ap)
    return run_results(**vars(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
