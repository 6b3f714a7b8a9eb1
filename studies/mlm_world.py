"""Issue 6 part 4: does the diverse-context MLM regulariser (DESIGN section 7) raise text fidelity
on the built-in world, and at what cost in concept fidelity?

For Textual Inversion and Custom Diffusion, each built-in world concept is trained twice with the
same seed, steps and batches (the trainer draws the diffusion batch from the step generator
before the MLM batch): without MLM (``--mlm-lambda 0``) and with it (``--mlm-lambda``, the paper's
reference weight, ``--mlm-prompts world``). The evaluation harness (``infusion evaluate``) then
renders the held-out world prompts (``infusion.world.concepts.eval_prompts``) with common seeds and
the world probes score them: text fidelity (share of a prompt's attributes the image shows, the
CLIP-T role) and concept fidelity (appearance similarity to the concept's images, the CLIP-I role).

Steps (each skipped when its output exists, so an interrupted run continues):
  1. contextualizer: pretrained on world captions for the world text encoder (``--ctx-steps``)
  2. training: methods x concepts x {off, on}   -> OUT/train/<method>/<concept>[-mlm]
  3. evaluation: one harness run over all files -> OUT/eval (images, per-image scores, summary.json)
  4. table: mean over concepts per (method, MLM), and per concept -> --doc (a lambda sweep; the comparison at the
     authors' settings is docs/results.md)

    python studies/mlm_world.py [--steps 400] [--images-per-prompt 2] [--out runs/mlm_world]
    python studies/mlm_world.py --model tiny --steps 2 --concepts sunball --max-prompts 2 \
        --images-per-prompt 1 --eval-steps 2 --ctx-steps 2 --doc /tmp/mlm_tiny.md   # plumbing smoke run

Without the world model (``infusion.world.model_dir()``) or its probes it stops with a message: it
never writes numbers it did not measure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

METHODS = {"ti": ("ti", "Textual Inversion"), "custom-diffusion": ("custom_diffusion", "Custom Diffusion")}


def world_available(model: str) -> str | None:
    """None when the world model (``world`` or a folder of it) and its probes are installed, else why not."""
    from infusion.world import model_dir

    root = model_dir() if model == "world" else Path(model)
    if not (root / "model_index.json").is_file():
        return (f"the built-in world model is not installed ({root} has no model_index.json): train it first "
                "(src/infusion/world/train_model.py, issue 4), then rerun this script")
    try:
        from infusion.evaluation import world_probe_scorer

        world_probe_scorer()
    except ValueError as e:
        return str(e)
    return None


def ensure_contextualizer(model: str, path: Path, steps: int, n_captions: int, seed: int) -> Path:
    """Pretrain the contextualizer for ``model``'s text encoder on world captions (once)."""
    if path.is_file():
        return path
    from infusion.mlm import PretrainConfig, load_text_side, pretrain_contextualizer
    from infusion.mlm.pretrain import world_captions

    text_encoder, tokenizer = load_text_side(model)
    print(f"pretraining the contextualizer: {steps} steps on {n_captions} world captions -> {path}", flush=True)
    pretrain_contextualizer(text_encoder, tokenizer, world_captions(n_captions, seed), path,
                            PretrainConfig(steps=steps, seed=seed), resume=True)
    return path


def weights(args, method: str) -> list[float]:
    """MLM weights of ``method``'s runs: 0 (the baseline), then ``--mlm-lambda`` or the paper's reference weight."""
    from infusion.methods import reference_mlm_weight

    return [0.0, *args.mlm_lambda.get(method, [reference_mlm_weight(method)])]


def train_runs(args, ctx: Path) -> dict[str, tuple[str, str, float]]:
    """Train every (method, concept, MLM weight); -> {output path: (method, concept, weight)}."""
    from infusion.training import TrainConfig, train
    from infusion.world.concepts import get_concept, write_concept_images

    runs = {}
    for concept in args.concepts:
        c = get_concept(concept)
        images = Path(args.out) / "images" / concept
        if not images.is_dir():
            write_concept_images(concept, images)
        for method in args.methods:
            for weight in weights(args, method):
                mlm = weight > 0
                suffix = ".safetensors" if method == "ti" else ""
                out = Path(args.out) / "train" / method / f"{concept}{f'-mlm{weight:g}' if mlm else ''}{suffix}"
                runs[str(out)] = (method, concept, weight)
                if out.exists():
                    continue
                cfg = TrainConfig(model=args.model, images=str(images), name=concept, class_phrase=c.class_phrase,
                                  out=str(out), method=method, steps=args.steps, batch_size=args.batch_size,
                                  seed=args.seed, mlm_lambda=weight, mlm_prompts="world",
                                  contextualizer=str(ctx) if mlm else None, checkpoint_every=args.checkpoint_every,
                                  resume="auto", method_args=dict(args.method_arg))
                t0 = time.time()
                print(f"train {method} <{concept}> mlm={'%g' % weight if mlm else 'off'}", flush=True)
                train(cfg, progress=not args.quiet)
                print(f"  {time.time() - t0:.0f} s", flush=True)
    return runs


def evaluate(args, files: list[str]) -> dict:
    from infusion.evaluation import EvalConfig, build_scorers, run_evaluation

    cfg = EvalConfig(model=args.model, files=files, out=str(Path(args.out) / "eval"), prompts="world",
                     images_per_prompt=args.images_per_prompt, max_prompts=args.max_prompts, seed=args.seed,
                     steps=args.eval_steps, batch_size=args.eval_batch_size, lfd_samples=0)
    scorers = build_scorers(args.model, probes=args.model != "tiny")
    return run_evaluation(cfg, scorers, progress=not args.quiet)


def _fmt(x: float, sign: bool = False) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:+.3f}" if sign else f"{x:.3f}")


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def table(args, runs: dict[str, tuple[str, str, float]], summary: dict) -> str:
    """Markdown: per (method, MLM weight) means over concepts and the difference to the baseline; per-concept rows."""
    rows = {}
    for r in summary["models"]:
        if r["file"] in runs and r["step"] == args.steps:
            rows[runs[r["file"]]] = r
    roles = summary.get("roles", {})
    lines = [f"| method | MLM lambda | concepts | images | text fidelity ({roles.get('text', '-')}) "
             f"| concept fidelity ({roles.get('image', '-')}) | text - baseline | concept - baseline |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method in args.methods:
        base = None
        for weight in weights(args, method):
            sel = [rows[k] for k in rows if k[0] == method and k[2] == weight]
            text, image = _mean([r["text"] for r in sel]), _mean([r["image"] for r in sel])
            base = base or (text, image)
            diff = ("", "") if weight == 0 else (_fmt(text - base[0], sign=True), _fmt(image - base[1], sign=True))
            lines.append(f"| {METHODS[method][1]} | {weight:g} | {len(sel)} | {sum(r['images'] for r in sel)} | "
                         f"{_fmt(text)} | {_fmt(image)} | {diff[0]} | {diff[1]} |")
    lines += ["", "Per concept (text fidelity / concept fidelity):", ""]
    for method in args.methods:
        ws = weights(args, method)
        lines += [f"| {METHODS[method][1]} | " + " | ".join(f"lambda {w:g}" for w in ws) + " |", "|---|" + "---:|" * len(ws)]
        for concept in args.concepts:
            cells = [rows.get((method, concept, w)) for w in ws]
            lines.append(f"| {concept} | " + " | ".join("-" if r is None else f"{_fmt(r['text'])} / {_fmt(r['image'])}" for r in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _ctx_summary(ctx: Path) -> str:
    """Where the contextualizer came from, read from its file: steps, captions, final MLM loss."""
    from infusion.mlm.contextualizer import read_contextualizer_file

    _, meta = read_contextualizer_file(ctx)
    steps = json.loads(meta.get("pretrain", "{}")).get("steps", "?")
    return (f"`{ctx.name}`, pretrained on {meta.get('n_captions', '?')} world captions for {steps} steps "
            f"(final MLM loss {meta.get('final_loss', '?')})")


def write_doc(args, text: str, seconds: float, ctx: Path) -> None:
    cmd = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    doc = f"""# Diverse-context MLM on the built-in world (issue 6, part 4)

Textual Inversion and Custom Diffusion, each built-in world concept trained without and with the
MLM regulariser (`L = L_diff + lambda * L_MLM`, DESIGN section 7), same seed ({args.seed}), steps
({args.steps}), batch size ({args.batch_size}) and diffusion batches; MLM prompts: the world
prompt set; contextualizer {_ctx_summary(ctx)}. Evaluation: the
held-out world prompts{f' (first {args.max_prompts})' if args.max_prompts else ''}, {args.images_per_prompt}
seed(s) each, {args.eval_steps} DDIM steps, scored by the world probes (text fidelity: share of
the prompt's attributes shown; concept fidelity: appearance similarity to the concept's images).

Model: `{args.model}`. Machine: {platform.machine()}, {platform.system()}; wall time {seconds / 60:.0f} min.

Command: `{cmd}`

{text}"""
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text(doc)
    print(f"wrote {args.doc}")


def _lambdas(pairs: list[str]) -> dict[str, list[float]]:
    """["ti=1e-5,1e-4", ...] -> {"ti": [1e-5, 1e-4]}."""
    out = {}
    for p in pairs:
        method, _, values = p.partition("=")
        try:
            ws = [float(v) for v in values.split(",")] if values else []
        except ValueError:
            ws = []
        if method not in METHODS or not ws or not all(w > 0 and math.isfinite(w) for w in ws):
            raise SystemExit(f"--mlm-lambda expects METHOD=VALUE[,VALUE...] (positive) with METHOD in {', '.join(METHODS)}, got {p!r}")
        out[method] = ws
    return out


def main(argv=None) -> int:
    from infusion.world.concepts import CONCEPTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="world", help="world (the measurement), a folder holding a snapshot of the world "
                    "model (its text encoder must be the packaged one's), or tiny (plumbing smoke run, no probes)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--concepts", nargs="+", default=list(CONCEPTS), choices=list(CONCEPTS))
    ap.add_argument("--steps", type=int, default=400, help="training steps per run")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mlm-lambda", action="append", default=[], metavar="METHOD=VALUE[,VALUE...]",
                    help="MLM weights to run besides 0 (default: the paper's reference weight, infusion.methods.reference_mlm_weight: "
                    "ti 1e-5, custom-diffusion 1e-4); several values make a sweep")
    ap.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE", help="passed to every method")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--ctx", default=None, help="contextualizer file (default: the packaged world one for the world, "
                    "else OUT/contextualizer.safetensors, pretrained if missing)")
    ap.add_argument("--ctx-steps", type=int, default=2000, help="contextualizer pretraining steps when it is missing")
    ap.add_argument("--ctx-captions", type=int, default=20000)
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--max-prompts", type=int, default=0, help="first N held-out prompts per concept (0: all 22)")
    ap.add_argument("--eval-steps", type=int, default=50, help="DDIM steps per image")
    ap.add_argument("--eval-batch-size", type=int, default=4)
    ap.add_argument("--out", default="runs/mlm_world")
    ap.add_argument("--doc", default="runs/mlm_world/mlm_world.md")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.mlm_lambda = _lambdas(args.mlm_lambda)
    from infusion.training.config import parse_method_args

    args.method_arg = parse_method_args(args.method_arg)

    if args.model != "tiny":
        why = world_available(args.model)
        if why:
            print(f"mlm_world: cannot measure: {why}", file=sys.stderr)
            return 2
    t0 = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from infusion.world import contextualizer_path

    default_ctx = contextualizer_path() if args.model != "tiny" and contextualizer_path().is_file() else Path(args.out) / "contextualizer.safetensors"
    ctx = ensure_contextualizer(args.model, Path(args.ctx) if args.ctx else default_ctx, args.ctx_steps, args.ctx_captions, args.seed)
    runs = train_runs(args, ctx)
    summary = evaluate(args, list(runs))
    text = table(args, runs, summary)
    (Path(args.out) / "mlm_table.json").write_text(json.dumps({"runs": runs, "table": text}, indent=1))
    print(text)
    write_doc(args, text, time.time() - t0, ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
