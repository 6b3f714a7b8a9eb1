"""Reports of an evaluation run: per-image CSV/JSON, per-model summary, the Markdown table of
the paper's Table 1 (plus LFD and W2), image grids, and metric-vs-step curves (Figs. 9-10)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from infusion.metrics.wasserstein import wasserstein2

COLUMNS = ("text", "image", "dino")  # scorer roles shown in the table


def _roles(scorers) -> dict[str, str]:
    roles: dict[str, str] = {}
    for s in scorers:
        for role, key in s.roles.items():
            roles.setdefault(role, key)
    return roles


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def human_bytes(n: float) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _json_safe(x):
    """NaN -> None (strict JSON has no NaN), recursively."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_per_image(out: Path, records: list[dict]) -> None:
    """``per_image.json`` (everything) and ``per_image.csv`` (without the pooled latents)."""
    records = sorted(records, key=lambda r: r["key"])
    (out / "per_image.json").write_text(json.dumps(_json_safe(records), indent=1, allow_nan=False))
    keys = sorted({k for r in records for k in r if k != "latent_pooled"})
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in records:
            w.writerow({k: r.get(k) for k in keys})


def summarise(entries, records: dict[str, dict], lfd: dict[str, dict], roles: dict[str, str]) -> list[dict]:
    """One row per evaluated model (label, concept, step): mean scores, W2^2 vs base, LFD."""
    base = {(r["text"], r["seed"]): r for r in records.values() if r["label"] == "base"}
    rows = []
    for e in entries:
        mine = [r for r in records.values() if r["label"] == e.label and r["file"] == e.path]
        row = {"label": e.label, "method": e.method, "concept": e.name, "class_phrase": e.class_phrase,
               "step": e.step, "file": e.path, "storage_bytes": e.storage_bytes, "images": len(mine)}
        for role in COLUMNS:
            key = roles.get(role)
            row[role] = _mean([r.get(key) for r in mine]) if key else float("nan")
        pairs = [(base[(r["text"], r["seed"])]["latent_pooled"], r["latent_pooled"]) for r in mine if (r["text"], r["seed"]) in base]
        row["w2"] = wasserstein2([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 2 else float("nan")
        rec = lfd.get(f"{e.label}|{e.path}")
        row["lfd"], row["lfd_se"] = (rec["lfd"], rec["lfd_se"]) if rec else (float("nan"), float("nan"))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], finals: set[str], roles: dict[str, str]) -> str:
    """Per method, mean over concepts of the final files (not checkpoints)."""
    name = lambda role, title: f"{title} ({roles[role]})" if role in roles else title  # noqa: E731
    head = (f"| method | concepts | images | {name('text', 'text fidelity')} | {name('image', 'image fidelity')} "
            f"| {name('dino', 'DINO')} | storage | LFD | W2^2 |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    labels = sorted({r["label"] for r in rows if r["file"] in finals})
    fmt = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"  # noqa: E731
    for label in labels:
        sel = [r for r in rows if r["label"] == label and r["file"] in finals]
        lines.append(
            f"| {label} | {len(sel)} | {sum(r['images'] for r in sel)} | {fmt(_mean([r['text'] for r in sel]))} "
            f"| {fmt(_mean([r['image'] for r in sel]))} | {fmt(_mean([r['dino'] for r in sel]))} "
            f"| {human_bytes(_mean([r['storage_bytes'] for r in sel]))} | {fmt(_mean([r['lfd'] for r in sel]))} "
            f"| {fmt(_mean([r['w2'] for r in sel]))} |"
        )
    notes = ("\nLFD: latent Fisher divergence to the base model on captions of non-customised concepts (Def. 3.1, "
             "summed over latent dims). W2^2: squared 2-Wasserstein distance between Gaussians fitted to base and "
             "customised latents of the same prompts and seeds, pooled to 4x2x2 (Def. 3.2). Storage: bytes on disk.\n")
    return "\n".join(lines) + "\n" + notes


def write_grids(out: Path, records: dict[str, dict]) -> list[Path]:
    """One grid per (label, concept, step): rows = prompts, columns = seeds; base grids per concept."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    groups: dict[tuple, list[dict]] = {}
    for r in records.values():
        if r["label"] != "base":
            groups.setdefault((r["label"], r["concept"], r["step"], r["file"]), []).append(r)
    base = {(r["text"], r["seed"]): r for r in records.values() if r["label"] == "base"}
    written = []
    for (label, concept, step, file), recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        prompts = sorted({r["prompt_index"] for r in recs})
        seeds = sorted({r["seed"] for r in recs})
        cell = {(r["prompt_index"], r["seed"]): r for r in recs}
        if len(cell) != len(prompts) * len(seeds):
            continue  # unfinished run: grid when complete
        ims = [Image.open(out / cell[(p, s)]["image"]).convert("RGB") for p in prompts for s in seeds]
        tag = "final" if step is None else f"step{step}"
        path = out / "grids" / f"{label.replace(':', '_')}_{concept}_{tag}_{Path(file).stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_image_grid(ims, rows=len(prompts), cols=len(seeds)).save(path)
        written.append(path)
        bpath = out / "grids" / f"base_{concept}.png"
        keys = [(cell[(p, s)]["text"], s) for p in prompts for s in seeds]
        if not bpath.exists() and all(k in base for k in keys):
            make_image_grid([Image.open(out / base[k]["image"]).convert("RGB") for k in keys], rows=len(prompts),
                            cols=len(seeds)).save(bpath)
            written.append(bpath)
    return written


def write_curves(out: Path, rows: list[dict], roles: dict[str, str]) -> list[Path]:
    """Metric against training step, per method (mean over concepts): the paper's Figs. 9 (W2)
    and 10 (LFD), plus text and image fidelity. Only methods with >= 2 steps are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        if r["step"] is not None:
            by_label.setdefault(r["label"], {}).setdefault(r["step"], []).append(r)
    by_label = {k: v for k, v in by_label.items() if len(v) >= 2}
    if not by_label:
        return []
    written = []
    for key, title in (("w2", "W2^2 to the base model (Fig. 9)"), ("lfd", "latent Fisher divergence (Fig. 10)"),
                       ("text", f"text fidelity ({roles.get('text', '-')})"), ("image", f"image fidelity ({roles.get('image', '-')})")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        drawn = False
        for label, steps in sorted(by_label.items()):
            xs = sorted(steps)
            ys = [_mean([r[key] for r in steps[s]]) for s in xs]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot(xs, ys, marker="o", label=label)
            drawn = True
        if drawn:
            ax.set_xlabel("training step")
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"curve_{key}.png"
            fig.savefig(path, dpi=90)
            written.append(path)
        plt.close(fig)
    return written


def write_reports(out: Path, entries, records: dict[str, dict], lfd: dict[str, dict], scorers, cfg) -> dict:
    roles = _roles(scorers)
    write_per_image(out, list(records.values()))
    rows = summarise(entries, records, lfd, roles)
    finals = {str(Path(f)) for f in cfg.files}
    table = markdown_table(rows, finals, roles)
    (out / "table.md").write_text(table)
    grids = write_grids(out, records)
    curves = write_curves(out, rows, roles)
    summary = {"roles": roles, "models": rows, "grids": [str(p.relative_to(out)) for p in grids],
               "curves": [str(p.relative_to(out)) for p in curves]}
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1, default=str, allow_nan=False))
    return summary
