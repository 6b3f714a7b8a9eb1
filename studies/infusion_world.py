"""Infusion on the built-in world: per concept and learning rate, text and concept fidelity of the
base and the customised model on held-out prompts (the demo's protocol, for every concept).

For every concept x lr: train Infusion (``--steps``), render ``--prompts`` held-out prompts with
the base and the customised stream from the same noise, score both with the world's probes.
Writes OUT/results.json, OUT/table.md and one grid per run (OUT/<concept>-lr<lr>/grid.png).

    python studies/infusion_world.py                       # all concepts, lr 0.01, 1,000 steps
    python studies/infusion_world.py --concepts sunball --lrs 0.01,0.05,0.2
    python studies/infusion_world.py --model tiny --steps 2 --prompts 1 --concepts sunball   # plumbing only
    python studies/infusion_world.py --concepts slashbox --method-arg residual=query    # a variant (own run folder)

It uses whatever probes and world model are installed; it never writes figures it did not measure.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def main(argv=None) -> int:
    from infusion.commands.demo import train_and_compare
    from infusion.training.config import parse_method_args
    from infusion.core.images import make_grid
    from infusion.world.concepts import CONCEPTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="world")
    ap.add_argument("--concepts", default=",".join(CONCEPTS), help="comma-separated built-in concept names")
    ap.add_argument("--lrs", default="0.01", help="comma-separated Infusion learning rates")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--prompts", type=int, default=8, help="held-out prompts per concept (spread over its list)")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/infusion_world")
    ap.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an Infusion setting, as `infusion train --method-arg` (repeatable; e.g. residual=query)")
    args = ap.parse_args(argv)
    method_args = parse_method_args(args.method_arg)
    variant = "".join(f"-{k}-{v}" for k, v in sorted(method_args.items()))  # run folder suffix: variants never share one

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    rows = []
    for name in args.concepts.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            t0 = time.time()
            run_dir = out / f"{name}-lr{lr:g}{variant}"
            res = train_and_compare(name, run_dir, model=args.model, steps=args.steps, lr=lr, n_prompts=args.prompts,
                                    guidance=args.guidance, seed=args.seed, method_args=method_args)
            make_grid([[b, c] for b, c in zip(res["base_images"], res["images"])], ["base", "customised"], res["prompts"],
                      cell=96).save(run_dir / "grid.png")
            row = {"concept": name, "lr": lr, "steps": args.steps, "n_prompts": len(res["prompts"]),
                   "train_seconds": round(res["train_seconds"], 1), "seconds": round(time.time() - t0, 1)}
            for key in ("text_fidelity", "concept_fidelity", "look"):  # look: the object probe reads the concept's look
                row[f"{key}_base"] = mean([s[key] for s in res["base_scores"]])
                row[f"{key}_customised"] = mean([s[key] for s in res["scores"]])
            row["per_prompt"] = [{"prompt": p, "base": b, "customised": c} for p, b, c in zip(res["prompts"], res["base_scores"], res["scores"])]
            rows.append(row)
            print(f"{name} lr {lr:g}: text fidelity {row['text_fidelity_base']:.3f} -> {row['text_fidelity_customised']:.3f}, "
                  f"concept fidelity {row['concept_fidelity_base']:.3f} -> {row['concept_fidelity_customised']:.3f}, "
                  f"look rate {row['look_base']:.2f} -> {row['look_customised']:.2f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    meta = {"model": args.model, "method_args": method_args, "steps": args.steps, "prompts": args.prompts, "guidance": args.guidance, "seed": args.seed,
            "threads": args.threads, "machine": platform.processor() or platform.machine()}
    (out / "results.json").write_text(json.dumps({"settings": meta, "runs": rows}, indent=1) + "\n")
    lines = ["| concept | lr | text fid. base -> customised | concept fid. base -> customised | look rate base -> customised | train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concept']} | {r['lr']:g} | {r['text_fidelity_base']:.3f} -> {r['text_fidelity_customised']:.3f} | "
                     f"{r['concept_fidelity_base']:.3f} -> {r['concept_fidelity_customised']:.3f} | "
                     f"{r['look_base']:.2f} -> {r['look_customised']:.2f} | {r['train_seconds']:.0f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.json'} and {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
