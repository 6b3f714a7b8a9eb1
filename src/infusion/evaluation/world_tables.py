"""Table 1, Table 2 and Fig. 7 of the results page, computed from the table stage's per-image records alone.

A per-image record is one JSON line of ``ResultsRun.write_images``: ``row``, ``concept``, ``setting`` (``base``,
``default`` or ``tuned``), ``prompt`` (the test prompt as the customised models read it, ``<name>`` unsubstituted),
``seed``, the probes' readings (``text_fidelity``, ``concept_fidelity``, ``look``, ``background``, ``objects``: [slot,
class] pairs) and ``pooled`` (the image's 4 x 2 x 2 pooled latent, W2's features); the grid prompts' first seed also
carry ``image`` (PNG, base64). Every interval is ``evaluation.intervals``' rule (docs/protocol.md).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from infusion.core.images import make_grid
from infusion.evaluation.intervals import bootstrap_interval, mean_interval
from infusion.evaluation.preference import Preference, preference
from infusion.evaluation.world_results import BASE_ROW, PAPER_ROW, image_of
from infusion.metrics.wasserstein import wasserstein2
from infusion.world.concepts import get_concept
from infusion.world.fidelity import parse_caption

Key = tuple  # (row, concept, setting)
Cell = tuple  # (estimate, low, high)


def load_image_records(folder: str | Path) -> dict[Key, list[dict]]:
    """{(row, concept, setting): [line, ...]} from every ``*.jsonl`` in ``folder`` (empty when there is none)."""
    out: dict[Key, list[dict]] = defaultdict(list)
    for path in sorted(Path(folder).glob("*.jsonl")):
        for text in path.read_text().splitlines():
            if text.strip():
                line = json.loads(text)
                out[(line["row"], line["concept"], line["setting"])].append(line)
    return dict(out)


def open_prompt(prompt: str, concept: str) -> bool:
    """A prompt that leaves the background and every position open (the scene is the model's to choose)."""
    named = parse_caption(prompt.replace(f"<{concept}>", get_concept(concept).class_phrase))
    return named.background is None and not any("position" in o for o in named.objects)


def scene_kept(line: dict, base: dict) -> bool:
    """Same background, and the same objects at the same slots, as the base model's image on the same noise."""
    return line["background"] == base["background"] and sorted(map(tuple, line["objects"])) == sorted(
        map(tuple, base["objects"]))


def _by_prompt(lines: list[dict], value) -> list[float]:
    """One value per prompt (the mean of its seeds' values; seeds whose value is None or NaN left out)."""
    per: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        v = value(line)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            per[line["prompt"]].append(float(v))
    return [float(np.mean(v)) for _, v in sorted(per.items())]


def mean_cell(lines_by_concept: list[list[dict]], value) -> Cell:
    """Mean over concepts of the mean over prompts of ``value(line)``, with its 95% interval; NaN when no value."""
    strata = [v for v in (_by_prompt(lines, value) for lines in lines_by_concept) if v]
    return mean_interval(strata) if strata else (math.nan, math.nan, math.nan)


def w2_cell(pairs: list[tuple[list[dict], list[dict]]]) -> Cell:
    """W2 (not squared) between the base's and the row's pooled test latents, the mean over concepts, with its
    interval; the images are paired by (prompt, seed) and a prompt's seeds move together, in both sets."""
    sets = []
    for base, row in pairs:
        theirs = {(b["prompt"], b["seed"]): b["pooled"] for b in base}
        prompts = sorted({r["prompt"] for r in row})
        seeds = sorted({r["seed"] for r in row})
        mine = {(r["prompt"], r["seed"]): r["pooled"] for r in row}
        keys = [(p, s) for p in prompts for s in seeds]
        if not all(k in mine and k in theirs for k in keys):
            raise ValueError("W2 needs the base model's and the row's images on the same (prompt, seed) pairs")
        a = np.asarray([theirs[k] for k in keys], dtype=np.float64)
        b = np.asarray([mine[k] for k in keys], dtype=np.float64)
        sets.append((a, b, len(seeds)))
    return paired_w2_interval(sets) if sets else (math.nan, math.nan, math.nan)


def paired_w2_interval(sets: list[tuple[np.ndarray, np.ndarray, int]]) -> Cell:
    """Mean over concepts of W2 (not squared) between paired feature sets ``(a, b, seeds)``: rows ordered prompt by
    prompt, ``seeds`` rows each, the same (prompt, seed) in both; the interval resamples prompts within each concept
    (a prompt's seeds move together, in both sets: same noise)."""
    def stat(picks):
        vals = []
        for (a, b, n), p in zip(sets, picks):
            idx = (p[:, None] * n + np.arange(n)[None, :]).reshape(-1)
            vals.append(math.sqrt(max(0.0, wasserstein2(a[idx], b[idx]))))
        return float(np.mean(vals))

    return bootstrap_interval([len(a) // n for a, _, n in sets], stat)


# ----------------------------------------------------------------------------- Table 1

COLUMNS = (  # key, header, format
    ("look_rate", "look rate", "{:.2f}"),
    ("concept_fidelity", "concept fid.", "{:.3f}"),
    ("text_fidelity", "text fid.", "{:.3f}"),
    ("scene_kept", "scene kept", "{:.2f}"),
    ("scene_kept_open", "scene kept (open prompts)", "{:.2f}"),
    ("w2", "W2 to base", "{:.2f}"),
    ("lfd", "LFD", "{:.4f}"),
)


@dataclass
class TableRow:
    """One line of Table 1: a row at one setting, its cells (estimate, low, high) and file size (bytes)."""

    row: str
    setting: str
    concepts: list
    cells: dict
    file_bytes: float | None = None


def table1(images: dict[Key, list[dict]], summaries: dict, rows: list[str], concepts: list[str],
           base_row: str = BASE_ROW) -> list[TableRow]:
    """Table 1 over ``concepts`` (those every row has), each of ``rows`` at ``default`` and ``tuned`` after the base
    row. ``summaries``: the test records (``test/<row>/<concept>/<setting>``: ``lfd_per_latent``, ``file_bytes``)."""
    out = []
    for row in [base_row] + list(rows):
        for setting in (["base"] if row == base_row else ["default", "tuned"]):
            have = [c for c in concepts if (row, c, setting) in images and (base_row, c, "base") in images]
            if not have:
                continue
            mine = [images[(row, c, setting)] for c in have]
            base = {c: {(b["prompt"], b["seed"]): b for b in images[(base_row, c, "base")]} for c in have}
            kept = lambda line: scene_kept(line, base[line["concept"]][(line["prompt"], line["seed"])])  # noqa: E731
            cells = {
                "look_rate": mean_cell(mine, lambda x: float(x["look"])),
                "concept_fidelity": mean_cell(mine, lambda x: x["concept_fidelity"]),
                "text_fidelity": mean_cell(mine, lambda x: x["text_fidelity"]),
                "scene_kept": mean_cell(mine, lambda x: float(kept(x))),
                "scene_kept_open": mean_cell(mine, lambda x: float(kept(x)) if open_prompt(x["prompt"], x["concept"]) else None),
                "w2": w2_cell([(images[(base_row, c, "base")], images[(row, c, setting)]) for c in have]),
            }
            recs = [summaries.get(f"test/{row}/{c}/{setting}") or {} for c in have]
            lfd = [r.get("lfd_per_latent") or [] for r in recs]
            if row == base_row:
                cells["lfd"] = (0.0, 0.0, 0.0)
            elif all(lfd):
                cells["lfd"] = mean_interval(lfd)
            else:
                cells["lfd"] = (math.nan, math.nan, math.nan)
            sizes = [r["file_bytes"] for r in recs if r.get("file_bytes") is not None]
            out.append(TableRow(row, setting, have, cells, float(np.mean(sizes)) if sizes else None))
    return out


def fmt_cell(cell: Cell, fmt: str) -> str:
    """``0.52 [0.41, 0.60]``; ``-`` for NaN; just the value when the interval is a point (the base row's zeros)."""
    est, lo, hi = cell
    if est is None or math.isnan(est):
        return "-"
    f = lambda v: fmt.format(v + 0.0)  # noqa: E731  (+ 0.0: no "-0.00")
    return f(est) if (math.isnan(lo) or lo == hi == est) else f"{f(est)} [{f(lo)}, {f(hi)}]"


# ----------------------------------------------------------------------------- Table 2


def table2(images: dict[Key, list[dict]], challengers: list[str], baselines: list[str], concepts: list[str],
           setting: str = "tuned") -> dict[tuple[str, str, str], Preference]:
    """{(challenger, baseline, criterion): Preference} on the same noise (``evaluation.preference``' rule) over
    ``concepts``, each model at ``setting``; pairs without records on every concept are left out."""
    out = {}
    for a in challengers:
        for b in baselines:
            if not all((a, c, setting) in images and (b, c, setting) in images for c in concepts):
                continue
            mine = [line for c in concepts for line in images[(a, c, setting)]]
            theirs = [line for c in concepts for line in images[(b, c, setting)]]
            for criterion in ("text", "image"):
                out[(a, b, criterion)] = preference(mine, theirs, criterion)
    return out


# ----------------------------------------------------------------------------- Fig. 7


class MissingRows(ValueError):
    """A Fig. 7 grid lacks a row the table has: the command reports it rather than keep an older picture."""


def fig7(images: dict[Key, list[dict]], concept: str, rows: list[str], references: list, base_row: str = BASE_ROW,
         setting: str = "tuned", cell: int = 72):
    """One grid per concept: columns the base model then every row at ``setting``, lines the grid prompts (first
    seed, same noise in every column) and the training images. Raises ``MissingRows`` naming what is missing."""
    cols = [(base_row, "base")] + [(r, setting) for r in rows]
    pictures = {}
    for r, s in cols:
        pictures[r] = {line["prompt"]: line["image"] for line in images.get((r, concept, s), []) if "image" in line}
    missing = [r for r, _ in cols if not pictures[r]]
    if missing:
        raise MissingRows(f"Fig. 7 <{concept}>: no pictures for {', '.join(missing)} (run the table stage for them)")
    prompts = sorted(pictures[base_row])
    lacking = [r for r, _ in cols if set(pictures[r]) != set(prompts)]
    if lacking:
        raise MissingRows(f"Fig. 7 <{concept}>: {', '.join(lacking)} lack some of the grid prompts")
    grid_rows = [[image_of(pictures[r][p]) for r, _ in cols] for p in prompts]
    refs = list(references)[: len(cols)]
    grid_rows.append(refs + [Image.new("RGB", refs[0].size, "white")] * (len(cols) - len(refs)))
    labels = ["base model"] + ["Infusion (paper)" if r == PAPER_ROW else r for r in rows]
    return make_grid(grid_rows, col_labels=labels, row_labels=prompts + ["training images"], cell=cell)
