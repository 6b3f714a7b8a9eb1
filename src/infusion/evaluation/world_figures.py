"""The paper's Figs. 9-11 on the built-in world: W2 to the base model (Fig. 9) and the latent Fisher divergence
(Fig. 10) against training steps for every method, and each method's images at chosen steps (Fig. 11).

Per (row, concept) unit: the row trains at its method's default lr (what a user gets) to the last step, saving
checkpoints; at each step of ``FigurePlan.steps`` the checkpoint generates the concept's test prompts x seeds
(the base model, for the reference, the same prompts with the class phrase and the same noise) and one JSON line
is appended to ``<records>/<row>__<concept>.jsonl``: the pooled latents (4 x 2 x 2 per image, for W2), the LFD of
every real latent (its spread), text and concept fidelity and look per image, and at the Fig. 11 steps two
held-out prompts' images (PNG, base64). The base model's pooled latents: ``<records>/base__<concept>.json``.
Records are the only input of the figures, so they are drawn again without generating anything; a unit
interrupted between checkpoints continues from its last line.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infusion.core.images import make_grid
from infusion.evaluation.harness import EvalConfig, lfd_dataset
from infusion.evaluation.intervals import bootstrap_interval
from infusion.evaluation.world_results import (
    BASE_ROW,
    PAPER_ROW,
    RECOMMENDED_ROW,
    Row,
    generate,
    grid_indices,
    image_of,
    model_fingerprint,
    png_b64,
    pooled_list,
    test_prompt_set,
)
from infusion.evaluation.world_tables import paired_w2_interval
from infusion.methods import get_method
from infusion.metrics.eps import UNetEps
from infusion.metrics.fisher import latent_fisher_divergence

FIGURE_ROWS = (
    Row(PAPER_ROW, "infusion", {}),
    Row(RECOMMENDED_ROW, "infusion", {"preset": "recommended"}),
    Row("ti", "ti", {}),
    Row("pplus", "pplus", {}),
    Row("dreambooth", "dreambooth", {}),
    Row("lora", "lora", {}),
    Row("custom-diffusion", "custom-diffusion", {}),
    Row("perfusion", "perfusion", {}),
)


@dataclass(frozen=True)
class FigurePlan:
    """What the figures cover; ``small`` is the test suite's plumbing check."""

    concepts: tuple = ("sunball", "slashbox", "halfmug")
    rows: tuple = FIGURE_ROWS
    steps: tuple = (100, 200, 400, 700, 1000, 1500, 2000)  # Figs. 9-10's x axis
    fig11_steps: tuple = (100, 200, 400, 1000, 2000)  # the paper's Fig. 11 columns
    fig11_prompts: int = 2

    @property
    def checkpoint_every(self) -> int:
        return math.gcd(*self.steps)


FIGURE_PLANS = {
    "full": FigurePlan(),
    "small": FigurePlan(concepts=("sunball",), rows=(FIGURE_ROWS[0], FIGURE_ROWS[2]), steps=(1, 2),
                        fig11_steps=(1, 2), fig11_prompts=1),
}


# ----------------------------------------------------------------------------- records


def read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FigureRun:
    """The figure units of one ``ResultsRun`` (its training, loading, generation settings and probes)."""

    def __init__(self, run, plan: FigurePlan, records: str | Path):
        self.run, self.plan, self.records = run, plan, Path(records)
        self.records.mkdir(parents=True, exist_ok=True)
        self._lfd_data = None
        mark, here = self.records / "model_fingerprint.txt", model_fingerprint(run.preset.model)
        if mark.is_file() and mark.read_text().strip() != here:
            raise ValueError(f"{self.records} holds records of model {mark.read_text().strip()}, not of {here}: "
                             "move that folder aside to start this model's figures")
        mark.write_text(here + "\n")

    def units(self) -> list[tuple]:
        """("figures", row, concept), concept by concept (the first concept complete for every row first)."""
        return [("figures", r, c) for c in self.plan.concepts for r in self.plan.rows]

    def prompts(self, concept) -> tuple[list[str], list[int]]:
        return test_prompt_set(concept.name, self.run.preset), list(range(self.run.preset.test_seeds))

    def base_reference(self, concept) -> dict:
        """The base model's pooled latents of the test prompts with the class phrase (W2's reference)."""
        path = self.records / f"{BASE_ROW}__{concept.name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        prompts, seeds = self.prompts(concept)
        texts = [q.replace(f"<{concept.name}>", concept.class_phrase) for q in prompts]
        _, lat = generate(self.run.load(None), texts, seeds, self.run.preset, latents_out=True)
        rec = {"prompts": texts, "seeds": seeds, "pooled": pooled_list(lat)}
        _write_atomic(path, json.dumps(rec))
        return rec

    def lfd_values(self, gen) -> list[float]:
        """The latent Fisher divergence of each real latent (non-customised captions), base vs ``gen``."""
        run = self.run
        if self._lfd_data is None:
            cfg = EvalConfig(model=run.preset.model, files=["-"], out=str(run.out), lfd_samples=run.preset.lfd_samples)
            self._lfd_data = lfd_dataset(cfg, run.base_pipe())
        if self._lfd_data is None:
            return []
        z, caps = self._lfd_data
        base = UNetEps.from_pipeline(run.base_pipe())
        res = latent_fisher_divergence(base, gen.eps, z, caps, run.base_pipe().scheduler, progress=False)
        return [round(float(v), 7) for v in res.per_sample]

    def unit(self, row: Row, concept) -> None:
        """Train ``row`` on ``concept`` to the last step, then score each checkpoint not yet in its records."""
        plan, run = self.plan, self.run
        self.base_reference(concept)
        path = self.records / f"{row.name}__{concept.name}.jsonl"
        done = {line["step"] for line in read_lines(path)}
        todo = [s for s in plan.steps if s not in done]
        if not todo:
            return
        trec = run.train(row, concept, "figures", steps=max(plan.steps), checkpoint_every=plan.checkpoint_every)
        lr = get_method(row.method).default_learning_rate(run.preset.model, run.preset.batch_size)  # what --lr omitted gives
        prompts, seeds = self.prompts(concept)
        texts = [q.replace(f"<{concept.name}>", concept.class_phrase) for q in prompts for _ in seeds]
        shown = grid_indices(len(prompts), plan.fig11_prompts)
        for step in todo:
            gen = run.load(run.checkpoint_path(trec, step))
            images, lat = generate(gen, prompts, seeds, run.preset, latents_out=True)
            rd = run.reader.read(images, texts, concept)
            line = {"row": row.name, "concept": concept.name, "step": step, "lr": lr, "pooled": pooled_list(lat), "lfd": self.lfd_values(gen),
                    "text_fidelity": [round(r["text_fidelity"], 4) for r in rd],
                    "concept_fidelity": [None if math.isnan(r["concept_fidelity"]) else round(r["concept_fidelity"], 4)
                                         for r in rd],
                    "look": [bool(r["look"]) for r in rd]}
            if step in plan.fig11_steps:
                line["fig11"] = {prompts[j]: png_b64(images[j * len(seeds)]) for j in shown}
            with path.open("a") as f:  # one unit per process (the run's locks): appends do not interleave
                f.write(json.dumps(line) + "\n")
        d = run.out / "runs" / row.name / concept.name  # every checkpoint is scored: free the disk
        for q in d.glob("figures-step*"):
            shutil.rmtree(q) if q.is_dir() else q.unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------- figures


def load_records(records: str | Path, plan: FigurePlan) -> tuple[dict, dict]:
    """(base pooled latents per concept, {(row, concept): {step: line}}) from the record files."""
    records = Path(records)
    base = {}
    for c in plan.concepts:
        p = records / f"{BASE_ROW}__{c}.json"
        if p.is_file():
            base[c] = np.asarray(json.loads(p.read_text())["pooled"], dtype=np.float64)
    lines = {}
    for r in plan.rows:
        for c in plan.concepts:
            got = {line["step"]: line for line in read_lines(records / f"{r.name}__{c}.jsonl")}
            if got:
                lines[(r.name, c)] = got
    return base, lines


def figure_scope(base: dict, lines: dict, plan: FigurePlan) -> tuple[list[str], list[str]]:
    """(concepts, rows) the curves average over and show: the concepts on which every row has every step; while
    none is, the one concept with the most complete rows and those rows (so a partial run draws like with like)."""
    complete = lambda r, c: c in base and len(lines.get((r, c), {})) == len(plan.steps)  # noqa: E731
    rows = [r.name for r in plan.rows]
    full = [c for c in plan.concepts if all(complete(r, c) for r in rows)]
    if full:
        return full, rows
    best = max(plan.concepts, key=lambda c: sum(complete(r, c) for r in rows))
    return [best], [r for r in rows if complete(r, best)]


def w2_curve(base: dict, lines: dict, row: str, concepts: list[str], steps, seeds: int) -> list[tuple]:
    """Per step: (step, W2, low, high): W2 (not squared) to the base model, the mean over ``concepts``; its interval
    resamples test prompts within each concept (a prompt's seeds move together, in both sets: same noise)."""
    out = []
    for step in steps:
        if not all(step in lines.get((row, c), {}) for c in concepts):
            continue
        sets = [(base[c], np.asarray(lines[(row, c)][step]["pooled"], dtype=np.float64), seeds) for c in concepts]
        out.append((step, *paired_w2_interval(sets)))
    return out


def lfd_curve(lines: dict, row: str, concepts: list[str], steps) -> list[tuple]:
    """Per step: (step, LFD, low, high): the mean over concepts of the mean over real latents; the interval
    resamples latents within each concept."""
    out = []
    for step in steps:
        if not all(step in lines.get((row, c), {}) and lines[(row, c)][step]["lfd"] for c in concepts):
            continue
        vals = [np.asarray(lines[(row, c)][step]["lfd"], dtype=np.float64) for c in concepts]
        out.append((step, *bootstrap_interval([len(v) for v in vals],
                                              lambda picks: float(np.mean([v[p].mean() for v, p in zip(vals, picks)])))))
    return out


STYLE_MARKERS = "osD^v<>ph*Xd"


def draw_curves(records: str | Path, plan: FigurePlan, fig_dir: str | Path, seeds: int) -> list[Path]:
    """Fig. 9 (W2) and Fig. 10 (LFD) against training steps, every row with records on every plan concept, error bars
    (95% bootstrap); the paper's Infusion drawn thick and black. -> the PNGs written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, lines = load_records(records, plan)
    concepts, rows = figure_scope(base, lines, plan)
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    colours = plt.get_cmap("tab10").colors
    written = []
    for name, title, ylabel, curve in (
        ("fig9_w2.png", "Fig. 9: W2 to the base model's latents", "W2 (not squared)",
         lambda r: w2_curve(base, lines, r, concepts, plan.steps, seeds)),
        ("fig10_lfd.png", "Fig. 10: latent Fisher divergence (prompts without the concept)", "LFD",
         lambda r: lfd_curve(lines, r, concepts, plan.steps)),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
        for i, r in enumerate(rows):
            pts = curve(r)
            if not pts:
                continue
            x, y, lo, hi = (np.asarray(v, dtype=np.float64) for v in zip(*pts))
            paper = r == PAPER_ROW
            # a percentile interval of a biased statistic (W2) can miss its estimate: the bar then starts at the point
            ax.errorbar(x, y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], label=("Infusion (paper)" if paper else r),
                        color="black" if paper else colours[i % len(colours)], marker=STYLE_MARKERS[i % len(STYLE_MARKERS)],
                        linewidth=2.6 if paper else 1.3, markersize=5, capsize=2, zorder=3 if paper else 2)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        if name.startswith("fig10"):  # LFDs span 1e-3 to 10; exact zeros stay on the axis (linear below 1e-3)
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(f"{title}\nmean of {', '.join(concepts)}; bars: 95% bootstrap", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        fig.savefig(fig_dir / name)
        plt.close(fig)
        written.append(fig_dir / name)
    return written


def draw_fig11(records: str | Path, plan: FigurePlan, fig_dir: str | Path, cell: int = 48) -> list[Path]:
    """Fig. 11: per concept, each row's images of the held-out prompts at the Fig. 11 steps (same noise across
    steps). A row whose records lack a step is left out of that concept's figure. -> the PNGs written."""
    _, lines = load_records(records, plan)
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c in plan.concepts:
        grid_rows, labels, cols = [], [], None
        for r in plan.rows:
            got = lines.get((r.name, c), {})
            if not all(s in got and "fig11" in got[s] for s in plan.fig11_steps):
                continue
            prompts = list(got[plan.fig11_steps[0]]["fig11"])
            cols = cols or [str(s) for _ in prompts for s in plan.fig11_steps]  # training step
            grid_rows.append([image_of(got[s]["fig11"][p]) for p in prompts for s in plan.fig11_steps])
            labels.append("Infusion (paper)" if r.name == PAPER_ROW else r.name)
        if not grid_rows:
            continue
        grid = make_grid(grid_rows, col_labels=cols, row_labels=labels, cell=cell)
        path = fig_dir / f"fig11_{c}.png"
        grid.save(path, optimize=True)
        written.append(path)
    return written
