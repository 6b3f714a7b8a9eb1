"""``docs/results.md`` as a paper-style page, written from records only: setup and definitions, Table 1, Table 2,
Figs. 7-11 each with a short reading of what the paper shows and what the world shows, then limitations.

Inputs: the table stage's per-image records (``<doc folder>/results/records/table``) and test records (the run's
``records``), the figures stage's records (``.../records/figures``) and Fig. 8's table (``fig8.json``). Nothing here
generates an image; the research log lives in ``docs/research/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from infusion.evaluation.intervals import LEVEL, B
from infusion.evaluation.world_fig8 import readings as fig8_readings
from infusion.evaluation.world_fig8 import table_lines as fig8_lines
from infusion.evaluation.world_figures import FIGURE_PLANS, FigurePlan, figure_scope, lfd_curve, load_records, w2_curve
from infusion.evaluation.world_results import BASE_ROW, PAPER_ROW, RECOMMENDED_ROW, Preset
from infusion.evaluation.world_tables import (
    COLUMNS,
    MissingRows,
    TableRow,
    fig7,
    fmt_cell,
    load_image_records,
    open_prompt,
    table1,
    table2,
)
from infusion.world.concepts import N_TRAIN_IMAGES, concept_images
from infusion.world.scenes import BACKGROUNDS, IMAGE_SIZE


def label(row: str) -> str:
    """A row as the page names it: the paper's Infusion in bold."""
    return "**Infusion (paper)**" if row == PAPER_ROW else ("base model" if row == BASE_ROW else row)


def group_of(row: str, mlm_rows: set) -> str:
    """The table's groups (docs/protocol.md): base; baselines; baselines with the MLM regulariser; Infusion; beyond."""
    if row == BASE_ROW:
        return "base"
    if row in mlm_rows:
        return "baselines + MLM regulariser"
    if row == PAPER_ROW:
        return "Infusion as the paper defines it"
    if row.startswith(PAPER_ROW):
        return "Infusion beyond the paper"
    return "baselines"


def table1_lines(rows: list[TableRow], mlm_rows: set) -> list[str]:
    head = ["group", "row", "setting"] + [c[1] for c in COLUMNS] + ["file KB"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    last = None
    for t in rows:
        g = group_of(t.row, mlm_rows)
        kb = "-" if t.file_bytes is None else f"{t.file_bytes / 1024:,.0f}" if t.file_bytes >= 10240 else f"{t.file_bytes / 1024:.1f}"
        out.append("| " + " | ".join([g if g != last else "", label(t.row), t.setting]
                                     + [fmt_cell(t.cells[k], f) for k, _, f in COLUMNS] + [kb]) + " |")
        last = g
    return out


def table2_lines(prefs: dict) -> list[str]:
    out = ["| Infusion form | against | text alignment: % preferred | image alignment: % preferred | images compared |",
           "|---|---|---|---|---|"]
    for (a, b, criterion), p in prefs.items():
        if criterion != "text":
            continue
        q = prefs[(a, b, "image")]
        pc = lambda x: f"{100 * x.share:.1f} [{100 * x.low:.1f}, {100 * x.high:.1f}]"  # noqa: E731
        out.append(f"| {label(a)} | {b} | {pc(p)} | {pc(q)} | {p.pairs} |")
    return out


def readings_table2(prefs: dict) -> list[str]:
    """Per Infusion form: against how many baselines its preference interval lies above one half, per criterion; where
    the paper's form is not preferred over every baseline in both, a line saying so (the paper: preferred over each)."""
    out, short = [], []
    for a in dict.fromkeys(k[0] for k in prefs):
        parts = []
        for criterion, name in (("text", "text alignment"), ("image", "image alignment")):
            cells = {b: p for (x, b, c), p in prefs.items() if x == a and c == criterion}
            above = [b for b, p in cells.items() if p.low > 0.5]
            below = [b for b, p in cells.items() if p.high < 0.5]
            parts.append(f"{name}: preferred over {len(above)} of {len(cells)} baselines"
                         + (f" ({', '.join(above)})" if above else "")
                         + (f", less preferred than {', '.join(below)}" if below else ""))
            if a == PAPER_ROW and len(above) < len(cells):
                short.append(f"{len(above)} of {len(cells)} ({criterion})"
                             + (f", less preferred than {', '.join(below)}" if below else ""))
        out.append(f"- {label(a)}: " + "; ".join(parts) + " (interval strictly above or below 50%).")
    if short:
        out.append("- **Where the world differs from the paper**: there, Infusion is preferred over each baseline in both "
                   f"text and image alignment; here {label(PAPER_ROW)} is preferred over " + "; and over ".join(short) + ".")
    return out


def _cell(rows: list[TableRow], row: str, setting: str, key: str) -> float:
    for t in rows:
        if t.row == row and t.setting == setting:
            return t.cells[key][0]
    return math.nan


def readings_table1(rows: list[TableRow]) -> list[str]:
    """What Table 1 says about the paper's claims, in numbers (tuned settings; a difference is called one only where
    the intervals do not overlap)."""
    tuned = [t for t in rows if t.setting == "tuned"]
    if not tuned or not any(t.row == BASE_ROW for t in rows):
        return []
    base_text = _cell(rows, BASE_ROW, "base", "text_fidelity")
    ranked = sorted(tuned, key=lambda t: -t.cells["text_fidelity"][0])
    top = ranked[0].cells["text_fidelity"]
    clear = [t for t in ranked if t.cells["text_fidelity"][2] < top[1]]  # wholly below the best row's interval
    out = [f"- Text fidelity (tuned): the base model {base_text:.3f}; highest {label(ranked[0].row)} "
           f"{fmt_cell(top, '{:.3f}')}; below it with intervals apart: "
           + (", ".join(f"{label(t.row)} {t.cells['text_fidelity'][0]:.3f}" for t in clear) or "none") + "."]
    best = lambda k: max(tuned, key=lambda t: t.cells[k][0] if not math.isnan(t.cells[k][0]) else -1)  # noqa: E731
    b, f = best("look_rate"), best("concept_fidelity")
    out.append(f"- The highest look rate (tuned): {label(b.row)} {fmt_cell(b.cells['look_rate'], '{:.2f}')}; the highest "
               f"concept fidelity: {label(f.row)} {fmt_cell(f.cells['concept_fidelity'], '{:.3f}')}.")
    for r in (PAPER_ROW, RECOMMENDED_ROW):
        if any(t.row == r for t in tuned):
            t = next(t for t in tuned if t.row == r)
            out.append(f"- {label(r)} (tuned): look {fmt_cell(t.cells['look_rate'], '{:.2f}')}, text fidelity "
                       f"{fmt_cell(t.cells['text_fidelity'], '{:.3f}')}, scene kept {fmt_cell(t.cells['scene_kept'], '{:.2f}')}, "
                       f"LFD {fmt_cell(t.cells['lfd'], '{:.4f}')}.")
    paper = next((t for t in tuned if t.row == PAPER_ROW), None)
    if paper is not None and b.row != PAPER_ROW:
        ahead = [t for t in tuned if t.cells["text_fidelity"][1] > paper.cells["text_fidelity"][2]]
        out.append("- **Where the world differs from the paper**: the paper's Infusion has the best CLIP-T of its table; "
                   f"here its text fidelity is {'below ' + ', '.join(label(t.row) for t in ahead) + ' (intervals apart)' if ahead else 'within the intervals of the best rows'}"
                   f", and its look rate {paper.cells['look_rate'][0]:.2f} is below {label(b.row)}'s "
                   f"{b.cells['look_rate'][0]:.2f}: on the world the paper's form learns a concept's colours more than "
                   "its layout ([variants.md](variants.md)).")
    same = sorted({t.row for t in tuned for d in rows if d.row == t.row and d.setting == "default" and d.cells == t.cells})
    if same:
        out.append(f"- Tuned equals default (the sweep chose the default's point on every concept): {', '.join(map(label, same))}.")
    return out


def reading_fig7(rows: list[TableRow]) -> list[str]:
    """The paper's Fig. 7 claim (the base model's background and layout kept, only the object changed) against the
    world's scene-kept column, tuned."""
    cells = {t.row: t.cells["scene_kept"] for t in rows
             if t.setting == "tuned" and t.row != BASE_ROW and not math.isnan(t.cells["scene_kept"][0])}
    if PAPER_ROW not in cells:
        return []
    kept = {r: c[0] for r, c in cells.items()}
    others = {r: v for r, v in kept.items() if r not in (PAPER_ROW, RECOMMENDED_ROW)}
    line = (f"The paper (Fig. 7): Infusion keeps SD's background and layout and changes only the object. Here, on the "
            f"same noise, the share of images whose scene is the base model's (Table 1, tuned): {label(PAPER_ROW)} "
            f"{kept[PAPER_ROW]:.2f}")
    if RECOMMENDED_ROW in kept:
        line += f", {label(RECOMMENDED_ROW)} {kept[RECOMMENDED_ROW]:.2f}"
    if others:
        line += f", the other rows {min(others.values()):.2f}-{max(others.values()):.2f}"
    paper = next(t for t in rows if t.setting == "tuned" and t.row == PAPER_ROW)
    out = [line + f"; where a prompt leaves the scene open (\"a photo of a <c>\"), {label(PAPER_ROW)} keeps it in "
           f"{paper.cells['scene_kept_open'][0]:.2f} of the images (few images: see Setup)."]
    baselines = {r: c for r, c in cells.items() if not r.startswith(PAPER_ROW)}
    lo = cells[PAPER_ROW][1]
    level = sorted(r for r, c in baselines.items() if c[2] >= lo)  # a baseline whose interval reaches the paper form's
    if level:
        apart = [r for r, c in cells.items() if r.startswith(PAPER_ROW) and all(c[1] > b[2] for b in baselines.values())]
        out.append(f"- **Where the world differs from the paper**: {label(PAPER_ROW)}'s scene kept "
                   f"{fmt_cell(cells[PAPER_ROW], '{:.2f}')} is not apart from {', '.join(level)} (intervals overlap)"
                   + (f"; {', '.join(label(r) for r in apart)} is apart from every baseline" if apart else "") + ".")
    return out


def readings_floor(summaries: dict, rows: list[str], concepts: list[str], floor: float) -> list[str]:
    """Where the protocol's text-fidelity floor decided a tuned choice: the sweep point with the best selection score
    was below the floor (validation text fidelity under the base model's minus ``floor``), so a lower one was chosen;
    or no point met it (docs/protocol.md: the page says so). One line per such (row, concept); none when the floor
    decided nothing."""
    out = []
    for r in rows:
        for c in concepts:
            choice, base = summaries.get(f"choice/{r}/{c}"), summaries.get(f"val/{BASE_ROW}/{c}")
            prefix = f"val/{r}/{c}/"
            points = {k[len(prefix):]: v for k, v in summaries.items() if k.startswith(prefix)}
            if not choice or not base or not points:
                continue
            chosen = points.get(f"lr{choice['lr']:g}-step{choice['steps']}")
            best_key, best = max(points.items(), key=lambda kv: kv[1]["selection_score"])
            met = choice.get("floor_met", True)
            better = chosen is not None and best["selection_score"] > chosen["selection_score"]
            if chosen is None or (met and not better):
                continue
            point = lambda v: f"look {v['look_rate']:.2f}, text {v['text_fidelity']:.3f}"  # noqa: E731
            lr, steps = best_key[2:].split("-step")
            how = "" if met else " (no point met the floor: the one with the highest text fidelity)"
            line = f"  - {label(r)} on {c}: chose lr {choice['lr']:g}, {choice['steps']} steps ({point(chosen)}){how}"
            if better and met:
                line += (f"; the floor ({base['text_fidelity'] - floor:.3f}) excluded lr {lr}, {steps} steps "
                         f"({point(best)})")
            out.append(line)
    if not out:
        return []
    return [f"- The text-fidelity floor (the base model's validation text fidelity minus a margin of {floor:g}, fixed "
            "before the run) decided these tuned choices (validation scores):"] + out


def curve_lines(records: Path, plan: FigurePlan, seeds: int) -> tuple[list[str], list[str], list[str]]:
    """(the concepts and rows the curves show (``figure_scope``), one reading line per row: W2 and LFD at the first
    and last step)."""
    base, lines = load_records(records, plan)
    concepts, rows = figure_scope(base, lines, plan)
    out, last, zero_rows, paper_w2 = [], [], [], None
    for r in rows:  # each row's curves once (every point is a bootstrap)
        w2 = w2_curve(base, lines, r, concepts, plan.steps, seeds)
        lfd = lfd_curve(lines, r, concepts, plan.steps)
        paper_w2 = w2 if r == PAPER_ROW else paper_w2
        if w2 and lfd:
            zero = all(v[1] == 0.0 for v in lfd)
            zero_rows += [r] if zero else []
            if w2[-1][0] == plan.steps[-1]:
                last.append((w2[-1][1], r))
            out.append(f"- {label(r)}: W2 {w2[0][1]:.2f} at step {w2[0][0]} -> {w2[-1][1]:.2f} at {w2[-1][0]}; "
                       + ("LFD exactly 0 at every step." if zero else
                          f"LFD {lfd[0][1]:.2g} -> {lfd[-1][1]:.2g} (largest {max(v[1] for v in lfd):.2g})."))
    if last:
        out.append(f"- At step {plan.steps[-1]}, W2 lowest first: " + ", ".join(f"{label(r)} {w:.2f}" for w, r in sorted(last))
                   + " (differences inside the error bars of the figure are no ranking). LFD exactly 0: "
                   + (", ".join(label(r) for r in zero_rows) or "none")
                   + ": by construction, not by measurement (a caption without the concept meets none of their weights: "
                   "the UNet is untouched and the concept's token is not in the prompt).")
    if paper_w2 and len(paper_w2) > 1:
        (s0, w0, lo0, hi0), (s1, w1, lo1, hi1) = paper_w2[0], paper_w2[-1]
        if w1 > w0:
            out.append(f"- **Where the world differs from the paper**: the paper's Infusion resists concept overfitting "
                       f"as training goes on; here its W2 goes from {w0:.2f} [{lo0:.2f}, {hi0:.2f}] at step {s0} to "
                       f"{w1:.2f} [{lo1:.2f}, {hi1:.2f}] at {s1}, like the baselines'. Its LFD is 0 as the paper says.")
    return concepts, rows, out


def reading_fig11(lines: dict, plan: FigurePlan, concepts: list[str], rows: list[str]) -> list[str]:
    """The paper's Fig. 11 claim (Infusion's images keep to the text at high step counts, where other methods need
    the step count controlled) in numbers from the figures' records: per row, text fidelity and look rate over all
    test prompts x seeds at the first and last Fig. 11 step (mean over ``concepts``), the largest loss first."""
    first, last = plan.fig11_steps[0], plan.fig11_steps[-1]
    mean = lambda r, s, k: float(sum(sum(lines[(r, c)][s][k]) / len(lines[(r, c)][s][k]) for c in concepts) / len(concepts))  # noqa: E731
    have = [r for r in rows if all(s in lines.get((r, c), {}) for c in concepts for s in (first, last))]
    if not concepts or not have:
        return []
    got = {r: (mean(r, first, "text_fidelity"), mean(r, last, "text_fidelity"), mean(r, first, "look"), mean(r, last, "look"))
           for r in have}
    ranked = sorted(have, key=lambda r: got[r][1] - got[r][0])
    out = [f"The paper (Fig. 11): Infusion's images keep to the text at steps {first}-{last}, where other methods need "
           f"the step count controlled. Here, text fidelity and look rate over every test prompt of "
           f"{', '.join(concepts)} (the figures' records), step {first} -> {last}, the largest loss of text fidelity first:", ""]
    out += [f"- {label(r)}: text fidelity {got[r][0]:.3f} -> {got[r][1]:.3f}; look {got[r][2]:.2f} -> {got[r][3]:.2f}"
            for r in ranked]
    if PAPER_ROW in got:
        keep_better = [r for r in have if got[r][1] - got[r][0] > got[PAPER_ROW][1] - got[PAPER_ROW][0]]
        if keep_better:
            out += ["", f"- **Where the world differs from the paper**: {label(PAPER_ROW)} loses "
                    f"{got[PAPER_ROW][0] - got[PAPER_ROW][1]:.3f} of text fidelity by step {last}; "
                    f"{', '.join(label(r) for r in keep_better)} {'lose' if len(keep_better) > 1 else 'loses'} less (a row that learns little of the look has "
                    "little to lose: read the look column beside it)."]
    return out


def open_prompt_count(images: dict, concepts: list[str]) -> str:
    """How much the "open prompts" column rests on: its prompts per concept among the base row's test prompts."""
    counts = []
    for c in concepts:
        lines = images.get((BASE_ROW, c, "base"), [])
        prompts = {x["prompt"] for x in lines}
        seeds = {x["seed"] for x in lines}
        counts.append((sum(open_prompt(q, c) for q in prompts), len(prompts), len(seeds)))
    if not counts:
        return "no concept complete yet"
    opened, total, seeds = counts[0]
    if any(c != counts[0] for c in counts):
        return "; ".join(f"{c}: {o} of {t} test prompts" for c, (o, t, _) in zip(concepts, counts))
    rest = "; too few for an interval" if opened == 1 else ""
    return (f"{opened} of the {total} test prompts per concept, {opened * seeds * len(concepts)} images "
            f"in all{rest}")


def cost_line(summaries: dict, wall: list, n_units: int | None = None) -> str:
    """What the run cost: the wall time of runs that finished (``wall``; a run cut off by a session's end leaves no
    wall record), the worker time of the units whose ``done/`` record has ``seconds``, and, given ``n_units``, all
    units at that rate (the units done before timing was recorded included)."""
    timed = [v["seconds"] for k, v in summaries.items() if k.startswith("done/") and "seconds" in (v or {})]
    parts = [f"wall time of finished runs {sum(w['seconds'] for w in wall) / 3600:.1f} h (a run cut off at a session's "
             "end records none)"] if wall else []
    if timed:
        rate = sum(timed) / len(timed)
        parts.append(f"worker time {sum(timed) / 3600:.1f} h over the {len(timed)} units timed "
                     f"({rate / 60:.0f} min a unit of one worker's time)")
        if n_units and n_units > len(timed):
            parts.append(f"all {n_units} units at that rate: about {n_units * rate / 3600:.0f} h of one worker")
    return ("Cost: " + "; ".join(parts) + ".") if parts else "Cost: not yet recorded."


def write_page(doc: Path, preset: Preset, summaries: dict, wall: list, fingerprint: str, mlm_rows: set,
               plan: FigurePlan = FIGURE_PLANS["full"]) -> tuple[dict, list[str]]:
    """Write ``doc`` and its figures from the records -> (the tables as JSON, the errors the command reports)."""
    res = doc.parent / "results"
    res.mkdir(parents=True, exist_ok=True)
    images = load_image_records(res / "records" / "table")
    rows = [r.name for r in preset.rows]
    complete = [c for c in preset.concepts
                if all((r, c, s) in images for r in rows for s in ("default", "tuned")) and (BASE_ROW, c, "base") in images]
    started = [c for c in preset.concepts if any(k[1] == c for k in images)]
    t1 = table1(images, summaries, rows, complete) if complete else []
    baselines = [r for r in rows if not r.startswith(PAPER_ROW) and r not in mlm_rows]
    t2 = table2(images, [r for r in (PAPER_ROW, RECOMMENDED_ROW) if r in rows], baselines, complete) if complete else {}
    errors, grids = [], []
    for c in started:
        path = res / f"grid_{c}.png"
        try:
            fig7(images, c, rows, concept_images(c)).save(path, optimize=True)
            grids.append(path.name)
        except MissingRows as e:
            path.unlink(missing_ok=True)  # never an older picture beside a newer table
            if c in complete:
                errors.append(str(e))
    fig_records = res / "records" / "figures"
    curve_concepts, curve_rows, curve_read = curve_lines(fig_records, plan, preset.test_seeds)
    fig8 = json.loads((res / "fig8.json").read_text()) if (res / "fig8.json").is_file() else None
    open_n = open_prompt_count(images, complete)
    done = sum(1 for k in summaries if k.startswith("done/table/") or k.startswith("done/base/"))
    n_units = len(preset.concepts) * (len(rows) + 1)
    L = [
        "# Infusion and the methods it is compared with, on the built-in world",
        "",
        "The paper's evaluation, figure by figure, on the project's built-in text-to-image world (a small model that "
        "runs on a CPU; no real Stable Diffusion run was possible here). Written by `infusion results` from records "
        f"(`--report-only` rewrites it). Model fingerprint `{fingerprint}`. Table units done: **{done} of {n_units}**; "
        f"concepts complete: {', '.join(complete) or 'none yet'}. " + cost_line(summaries, wall, n_units),
        "",
        "## Setup",
        "",
        f"- **World**: {IMAGE_SIZE} x {IMAGE_SIZE} scenes of up to two objects (class, colour, size, position, "
        f"pattern) on one of {len(BACKGROUNDS)} backgrounds, captioned in a fixed grammar ([docs/world.md](world.md)). "
        "Five concepts (`<sunball>`, `<slashbox>`, `<halfmug>`, `<halfstar>`, `<duotree>`), each a class with a "
        f"two-colour look its class word does not draw, {N_TRAIN_IMAGES} training images on one background.",
        "- **Probes replace CLIP and DINO** (trained on renders, checked on renders): *text fidelity* (CLIP-T's role), "
        "the share of the attributes a prompt names that the image shows, object counts included; *concept fidelity* "
        "(DINO-I's role), the cosine of the object probe's embedding of the generated object to the references'; "
        "*look rate*, the share of concept objects read with the concept's colours and pattern.",
        "- **Scene kept** (the paper's \"where pathway\" claim): the share of images, on the base model's noise, whose "
        "background, object count and object slots are the base model's; *open prompts* name no background and no "
        f"position ({open_n}). **W2**: the 2-Wasserstein distance (not squared) between Gaussians fitted to the customised and "
        "the base model's pooled test latents. **LFD**: the latent Fisher divergence on 32 real latents of captions "
        "without the concept (concept-agnostic overfitting, Def. 3.1).",
        f"- **Rows**: {label(PAPER_ROW)} is `--method infusion` as the paper defines it (the CLI's default); "
        f"{RECOMMENDED_ROW} (\"Infusion (recommended)\" in Fig. 8) is `--method-arg preset=recommended` (its own attention "
        "maps, trained at t < T/2: `maps=own train_t_max=0.5`, [variants.md](variants.md)); `+mlm`: the same baseline "
        "with the diverse-context MLM regulariser. A *unit* of the run is one row (or the base model) on one concept.",
        f"- **Protocol** ([protocol.md](protocol.md), fixed before the run): every row at its defaults and tuned "
        f"(2 learning rates x 250/500/1,000 steps, chosen on validation prompts; a point is eligible when its text "
        f"fidelity is at least the base model's minus {preset.text_floor}); 22 test prompts x {preset.test_seeds} seeds per concept, DDIM {preset.ddim_steps} "
        f"steps, guidance {preset.guidance}. Intervals: {LEVEL:.0%} bootstrap ({B} resamples) over (concept, prompt) "
        "pairs within concepts; every bracket on this page is one, except LFD's (over (concept, latent)) and Fig. 8's "
        "(over (pair, prompt)). A W2 bracket may lie mostly above its estimate (see Limitations).",
        "",
        "## Table 1: every method, defaults and tuned",
        "",
        "The paper (Table 1, SD 1.5): Infusion reaches the best CLIP-T (0.267) with a competitive DINO (0.697) at 11 KB. "
        "Rows grouped as the protocol fixes them; mean over the complete concepts.",
        "",
    ]
    if t1:
        L += table1_lines(t1, mlm_rows) + ["", *readings_table1(t1),
                                           *readings_floor(summaries, rows, complete, preset.text_floor), ""]
    else:
        L += ["Not run yet under this protocol (`infusion results --workers 2` resumes it).", ""]
    L += ["## Table 2: pairwise preference, probe-judged", "",
          "The paper (Table 2): 21 people preferred Infusion over each of its four baselines (DreamBooth, Textual "
          "Inversion, Custom Diffusion, Perfusion) in both text alignment (65-87%) and image alignment (51-85%); it has "
          "no P+ or LoRA column. Here, on the same noise, the image with the higher text fidelity (text) or concept fidelity "
          "(image) wins, a tie or an unreadable value counts half; tuned settings. The app's Study tab asks people "
          "the same two questions ([usage.md](usage.md)).", ""]
    L += (table2_lines(t2) + ["", *readings_table2(t2)] if t2 else ["Not run yet (needs Table 1's records)."]) + [""]
    L += ["## Fig. 7: pictures", "",
          "Columns: the base model (class phrase), then every row tuned, on the same noise; lines: four test prompts, "
          "then the training images.", ""]
    L += [f"![{g}](results/{g})" for g in grids] or ["Not drawn yet (needs Table 1's records)."]
    L += ["", *reading_fig7(t1)]
    L += [f"- **Error**: {e}" for e in errors] + [""]
    L += ["## Fig. 8: two concepts in one prompt", "",
          "The paper (Fig. 8): two Infusion concepts in one prompt are both faithful to their references, where Custom "
          "Diffusion tends to overlook one of them. Here: three concept pairs, Infusion files composed against Custom Diffusion's constrained merge of "
          "two trained folders (`infusion merge`); `infusion results --stage fig8`.", ""]
    if fig8:
        L += fig8_lines(fig8) + ["", "![fig8](results/fig8.png)", "", *fig8_readings(fig8), ""]
    else:
        L += ["Not run yet.", ""]
    L += ["## Figs. 9 and 10: W2 and LFD against training steps", "",
          "The paper (Figs. 9, 10): DreamBooth-LoRA, Custom Diffusion and Textual Inversion drift further from the base "
          "model with training (W2), Perfusion less; Infusion resists concept overfitting and, its prompts without the "
          "concept being the base model's, is unaffected by concept-agnostic overfitting (LFD). Here: every method at "
          f"its default learning rate, checkpoints at {', '.join(map(str, plan.steps))} steps, on "
          f"{', '.join(plan.concepts)}; `infusion results --stage figures`.", ""]
    if curve_rows:
        L += [(f"Drawn so far: mean of {', '.join(curve_concepts)} (of {', '.join(plan.concepts)})."
               if len(curve_concepts) < len(plan.concepts) else f"Mean of {', '.join(curve_concepts)}; error bars: 95% "
               "bootstrap (W2: over (concept, prompt); LFD: over (concept, latent))."), "",
              "![Fig. 9](results/fig9_w2.png)", "", "![Fig. 10](results/fig10_lfd.png)", "", *curve_read, ""]
        missing = [r.name for r in plan.rows if r.name not in curve_rows]
        if missing:
            L += [f"Not complete yet: {', '.join(missing)}.", ""]
    else:
        L += ["Not complete on every figure concept yet.", ""]
    L += ["## Fig. 11: images along training", "",
          f"Two held-out prompts per concept at steps {', '.join(map(str, plan.fig11_steps))}, the same noise at every "
          "step.", ""]
    _, fig_lines = load_records(fig_records, plan)
    fig11 = []
    for c in plan.concepts:
        if (res / f"fig11_{c}.png").is_file():
            shown = next((list(ln[plan.fig11_steps[0]]["fig11"]) for (r, cc), ln in fig_lines.items()
                          if cc == c and plan.fig11_steps[0] in ln and "fig11" in ln[plan.fig11_steps[0]]), [])
            halves = " | ".join(f"columns {1 + k * len(plan.fig11_steps)}-{(k + 1) * len(plan.fig11_steps)}: \"{q}\""
                                for k, q in enumerate(shown))
            fig11 += [f"`<{c}>`: {halves}", "", f"![fig11_{c}](results/fig11_{c}.png)", ""]
    L += fig11[:-1] or ["Not drawn yet."]
    fig11_read = reading_fig11(fig_lines, plan, curve_concepts, curve_rows) if curve_rows else []
    L += ([""] + fig11_read) if fig11_read else []
    L += ["", "## Limitations", "",
          f"- The world is small: {IMAGE_SIZE} x {IMAGE_SIZE} images, a closed grammar, probes in place of CLIP and "
          "DINO. It shows what each method can and cannot do on it; it does not measure Stable Diffusion.",
          "- Learning rates of the baselines are their authors' defaults scaled to the world "
          "([baselines.md](baselines.md)); the tuned rows get the same sweep each (2 learning rates x 3 step counts).",
          f"- The text-fidelity floor ({preset.text_floor} under the base model's validation text fidelity; one "
          f"missed attribute in one of {preset.val_prompts * preset.val_seeds} validation images can fall below it) "
          "kept several tuned rows from the sweep points where they learned the look (listed under Table 1); both "
          "settings are in the table, and every sweep point's validation scores are kept in results.json (`val/` "
          "records), so the point another floor would choose can be read from them (its test scores need it trained "
          "again: checkpoints are not committed).",
          "- W2 intervals lie mostly above their estimates: a resample repeats prompts, and Gaussians fitted to "
          "fewer distinct latents lie further apart. Read them as spread, not as a bias-corrected range.",
          "- The research behind the world and these readings (why the paper's Infusion learns little of a look "
          "here, the studies): [research/](research/).", ""]
    data = {"complete_concepts": complete,
            "table1": [{"row": t.row, "setting": t.setting, "concepts": t.concepts, "file_bytes": t.file_bytes,
                        **{k: list(v) for k, v in t.cells.items()}} for t in t1],
            "table2": [{"a": a, "b": b, "criterion": c, "share": p.share, "low": p.low, "high": p.high, "pairs": p.pairs}
                       for (a, b, c), p in t2.items()],
            "errors": errors}
    doc.write_text("\n".join(L) + "\n")
    return data, errors
