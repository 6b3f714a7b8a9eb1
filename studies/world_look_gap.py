"""Which part of the look-rate gap between Infusion (``maps=own``) and the best baseline remains, and why:
the table's test prompts (22 per concept, 2 seeds, the table's protocol) split by what they ask for, read
per image by the world's probes.

Prompt kinds: **scene** ("a photo of a <c>" and "... on the snow": the concept's own size and place asked
for), **corner** (a corner named), **small** (a small size named: the concept was trained large), **two
objects** (a corner and a second object). Per kind and model: look rate, **obeys** (every attribute the
prompt names is shown: the probes' text fidelity is 1) and **look & obeys** (the user's question: "is
that my object, where and how I asked for it?").

Models: the base model told the look in words (``<c>`` replaced by "yellow and blue dipped ball": what
the world itself can draw), the paper's Infusion, ``infusion-own`` and ``infusion-own-late``, each at its
defaults, and the baseline with the highest look rate in the table, LoRA, at the setting its validation sweep chose (read from
``docs/results/results.json``; retrained here, same seed). Every model sees the same noise. The window swap
(``own@late``, ``late@full``) regenerates ``infusion-own``'s file adding its Delta at t < T/2 only and
``infusion-own-late``'s adding it at every step: which of training and sampling window makes the difference.

    python studies/world_look_gap.py                        # sunball, slashbox -> docs/results/look_gap.json
    python studies/world_look_gap.py --concepts halfmug --results runs/results_world   # a run in progress
    python studies/world_look_gap.py --concepts halfstar --rows late,lora
    python studies/world_look_gap.py --concepts halfstar --rows own@late,late@full   # training vs. generation window
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

KINDS = ("scene", "corner", "small", "two objects")
# --rows -> the table's row (None: the base model told the look in words), in the tables' order
MODELS = {"prompted": None, "infusion": "infusion", "own": "infusion-own", "late": "infusion-own-late", "lora": "lora",
          "own@late": "infusion-own", "late@full": "infusion-own-late"}
# rows whose trained file is generated with another injection window (t_max): training vs. generation's share
WINDOWS = {"own@late": 0.5, "late@full": 1.0}


def prompt_kind(text: str, cls: str) -> str:
    """The kind of a test prompt (its concept replaced by the class word): see the module docstring."""
    from infusion.world.fidelity import parse_caption

    named = parse_caption(text)
    obj = next(o for o in named.objects if o["cls"] == cls)
    if obj.get("size") == "small":
        return "small"
    if len(named.objects) > 1:
        return "two objects"
    if obj.get("position"):
        return "corner"
    return "scene"


def breakdown(reads: list[dict], kinds: list[str]) -> dict:
    """Per-image readings + their prompt kinds -> {kind or "all": {look, obeys, look_and_obeys, n}}."""
    out = {}
    for k in (*KINDS, "all"):
        rs = [r for r, kk in zip(reads, kinds) if k in ("all", kk)]
        if not rs:
            continue
        obeys = [r["text_fidelity"] >= 1.0 for r in rs]
        out[k] = {"look": sum(r["look"] for r in rs) / len(rs), "obeys": sum(obeys) / len(rs),
                  "look_and_obeys": sum(r["look"] and o for r, o in zip(rs, obeys)) / len(rs), "n": len(rs)}
    return out


def with_window(path: str | Path, t_max: float, out: Path) -> Path:
    """A copy of the concept file at ``path`` that injects at t < t_max * T only (its Deltas unchanged)."""
    from infusion.methods.infusion.concept import Concept

    concept = Concept.load(path)
    concept.t_max = float(t_max)
    out.parent.mkdir(parents=True, exist_ok=True)
    return concept.save(out, dtype=next(iter(concept.deltas.values())).dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="sunball,slashbox")
    ap.add_argument("--rows", default=",".join(MODELS), help="which models: prompted, infusion, own (maps=own), late (maps=own t_max=0.5), lora, "
                    "own@late (own's file generated at t < T/2 only), late@full (late's file generated at every step)")
    ap.add_argument("--out", default="runs/look_gap", help="work folder (its own training records)")
    ap.add_argument("--results", default="docs/results/results.json",
                    help="the table's JSON, or the work folder of a run in progress (runs/results_world): LoRA's chosen setting")
    ap.add_argument("--json", default="docs/results/look_gap.json", help="the numbers; the tables go beside it (.md)")
    args = ap.parse_args(argv)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not wanted or set(wanted) - set(MODELS):
        ap.error(f"--rows: unknown {sorted(set(wanted) - set(MODELS)) or 'none given'}; use some of {', '.join(MODELS)}")

    import torch

    from infusion.evaluation.world_results import (
        PRESETS,
        WORLD_ROWS,
        Records,
        ResultsRun,
        generate,
        test_prompt_set,
    )
    from infusion.world.concepts import get_concept

    sys.path.insert(0, str(Path(__file__).parent))
    from world_look_source import described

    torch.set_num_threads(1)
    preset = PRESETS["full"]
    run = ResultsRun(args.out, preset, log=print)
    src = Path(args.results)
    table = Records(src).all() if src.is_dir() else json.loads(src.read_text())["records"]
    rows = {r.name: r for r in WORLD_ROWS}
    seeds = list(range(preset.test_seeds))
    out_json = Path(args.json)
    result = json.loads(out_json.read_text()) if out_json.is_file() else {}
    for name in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        concept = get_concept(name)
        tok = f"<{name}>"
        prompts = test_prompt_set(name, preset)
        texts = [p.replace(tok, concept.class_phrase) for p in prompts for _ in seeds]
        kinds = [prompt_kind(t, concept.obj.cls) for t in texts]
        entry = result.setdefault(name, {})
        for what in wanted:
            t0 = time.time()
            if what == "prompted":
                gen, ps, label = run.load(None), [p.replace(tok, described(concept)) for p in prompts], "base, look in words"
            else:
                row = rows[MODELS[what]]
                if what == "lora":
                    choice = table.get(f"choice/{row.name}/{name}")
                    if choice is None:
                        print(f"{name}: no chosen LoRA setting in {args.results} yet; skipped")
                        continue
                    rec = run.train(row, concept, f"lr{choice['lr']:g}-{choice['steps']}", lr=choice["lr"], steps=choice["steps"])
                    label = f"{row.name} tuned (lr {choice['lr']:g}, {choice['steps']} steps)"
                else:
                    rec = run.train(row, concept, "default")
                    label = f"{row.name} defaults"
                path = rec["out"]
                if what in WINDOWS:
                    path = with_window(path, WINDOWS[what], Path(args.out) / "windows" / what / f"{name}.safetensors")
                    label += f", generated with t_max={WINDOWS[what]:g}"
                gen, ps = run.load(str(path)), prompts
            reads = run.reader.read(generate(gen, ps, seeds, preset), texts, concept)
            entry[what] = {"label": label, **breakdown(reads, kinds)}
            a = entry[what]["all"]
            print(f"{name} {label}: look {a['look']:.2f}, obeys {a['obeys']:.2f}, look & obeys {a['look_and_obeys']:.2f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    md = markdown(result)
    out_json.with_suffix(".md").write_text(md)
    print(md)
    return 0


def markdown(result: dict) -> str:
    """The JSON -> one table per concept (rows: models; columns: look / obeys / look & obeys per prompt kind)."""
    lines = [("Produced by `python studies/world_look_gap.py` (`docs/results/look_gap.json`): the table's test prompts "
              "and seeds, split by what they ask for; each cell **look rate / obeys / look & obeys** (obeys: every "
              "attribute the prompt names is shown; look & obeys: both in the same image). Scene: no size or corner "
              "named (the concept's own, large and centred); corner: a corner named; small: a small size named (the "
              "concept was trained large); two objects: a corner and a second object named."), ""]
    from infusion.world.concepts import CONCEPTS

    order = list(MODELS)
    for name in sorted(result, key=lambda c: list(CONCEPTS).index(c) if c in CONCEPTS else len(CONCEPTS)):
        entries = [result[name][m] for m in sorted(result[name], key=lambda m: order.index(m) if m in order else len(order))]
        kinds = [k for k in (*KINDS, "all") if k in entries[0]]
        lines += [f"`<{name}>`", "", "| model | " + " | ".join(f"{k} (n={entries[0][k]['n']})" for k in kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        for e in entries:
            lines.append(f"| {e['label']} | " + " | ".join(
                f"{e[k]['look']:.2f} / {e[k]['obeys']:.2f} / **{e[k]['look_and_obeys']:.2f}**" for k in kinds) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
