"""Run the toy analysis end to end and write its figures, numbers and README (Figs. 4-6, 9-10)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from infusion.toy.experiment import METHODS, Checkpoint, customise, settings, tokens_for, train_foundation

TITLES = {"full": "full fine-tuning (DreamBooth-like)", "kv": "K/V fine-tuning (Custom-Diffusion-like)", "infusion": "Infusion"}
COLOURS = ["tab:red", "tab:blue", "tab:green", "tab:orange"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(results: dict[str, list[Checkpoint]], setting, path: Path, show: list[int], lim: float) -> None:
    """Rows: methods; columns: training steps; dots: samples of the concepts in ``show``."""
    plt = _plt()
    steps = [c.step for c in results[METHODS[0]]]
    fig, axes = plt.subplots(len(METHODS), len(steps), figsize=(2.2 * len(steps), 2.3 * len(METHODS)), squeeze=False)
    for r, method in enumerate(METHODS):
        for c, cp in enumerate(results[method]):
            ax = axes[r, c]
            for i in show:
                pts = cp.samples[i][:400]
                ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.6, color=COLOURS[i % len(COLOURS)])
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            if r == 0:
                ax.set_title(f"step {cp.step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(TITLES[method], fontsize=7)
            label = f"LFD {cp.metrics['lfd']:.3g}"
            if "modes_kept" in cp.metrics:
                label = f"modes {cp.metrics['modes_kept']}/25"
            ax.text(0.02, 0.02, label, transform=ax.transAxes, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@torch.no_grad()
def plot_field(base, models: dict, concept: int, path: Path, t: int = 100, lim: float = 3.0) -> None:
    """Fig. 6: the eps field (the negative score direction) of a non-customised concept."""

    plt = _plt()
    g = torch.linspace(-lim, lim, 17)
    xy = torch.cartesian_prod(g, g)
    tok = tokens_for(concept, xy.shape[0])
    tt = torch.full((xy.shape[0],), t)
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(3 * (1 + len(models)), 3))
    for ax, (name, m) in zip(axes, [("base", base)] + list(models.items())):
        e = -m(xy, tt, tok)  # score direction
        ax.quiver(xy[:, 0], xy[:, 1], e[:, 0], e[:, 1], angles="xy", scale=40, width=0.004)
        ax.set_title(name, fontsize=8)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"score field -eps(x, t={t}) of a non-customised concept after customisation (Fig. 6)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_curves(all_results: dict, path: Path) -> None:
    """Figs. 9-10 for the toy: LFD (agnostic) and W2 / modes kept (specific) against step."""
    plt = _plt()
    panels = [("agnostic", "lfd", "LFD on non-customised concepts"), ("agnostic", "minor_ratio", "narrowest std of non-customised / base"),
              ("specific", "modes_kept", "modes kept (of 25)"), ("specific", "w2", "W2^2 to base samples of the class")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (s, key, title) in zip(axes, panels):
        for method in METHODS:
            cps = all_results[s][method]
            ax.plot([c.step for c in cps], [c.metrics[key] for c in cps], marker="o", label=method)
        ax.set_title(f"{s}: {title}", fontsize=8)
        ax.set_xlabel("training step")
        ax.set_xscale("symlog", linthresh=100)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _table(all_results) -> str:
    lines = []
    for s, results in all_results.items():
        keys = ["lfd", "area_ratio", "minor_ratio", "w2"] + (["modes_kept", "line_shape"] if s == "specific" else [])
        lines += [f"\n### {s}\n", "| method | step | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
        for method in METHODS:
            for cp in results[method]:
                vals = [f"{cp.metrics[k]:.4g}" if isinstance(cp.metrics[k], float) else str(cp.metrics[k]) for k in keys]
                lines.append(f"| {method} | {cp.step} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def run(out: str | Path, eval_steps=(0, 100, 400, 1000, 2000), foundation_steps: int = 3000, n_eval: int = 1000,
        seed: int = 0, progress: bool = True) -> dict:
    """Train both foundation models, customise with every method, write figures + numbers to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_results: dict = {}
    for name, setting in settings().items():
        base = train_foundation(setting, steps=foundation_steps, seed=seed, progress=progress)
        results, finals = {}, {}
        for method in METHODS:
            results[method], finals[method] = customise(
                base, setting, method, list(eval_steps), n_eval=n_eval, seed=seed, progress=progress
            )
        all_results[name] = results
        if name == "agnostic":
            plot_samples(results, setting, out / "fig4_agnostic.png", show=list(range(len(setting.concepts))), lim=3.0)
            plot_field(base, finals, concept=1, path=out / "fig6_field.png")
        else:
            plot_samples(results, setting, out / "fig5_specific.png", show=[setting.customised], lim=3.0)
    plot_curves(all_results, out / "curves.png")
    numbers = {s: {m: [{"step": c.step, **c.metrics} for c in cps] for m, cps in r.items()} for s, r in all_results.items()}
    (out / "results.json").write_text(json.dumps(numbers, indent=1))
    (out / "table.md").write_text(_table(all_results))
    return numbers
