"""``infusion evaluate``: concepts x prompts x seeds -> per-image scores, LFD, W2, tables, grids, curves.

Resumable (re-running skips finished images); ``accelerate launch --multi_gpu --num_processes N
-m infusion.cli evaluate ...`` splits the work across processes (on a CPU-only machine too: the
processes then join a gloo group).
"""

from __future__ import annotations

from infusion.commands import HelpFormatter

HELP = "evaluate customisations: fidelity, overfitting (LFD, W2), tables, curves"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("evaluate", help=HELP,
                       formatter_class=HelpFormatter)
    p.add_argument("files", nargs="+", help="customisation files/folders written by `infusion train` (any method)")
    p.add_argument("--model", required=True, help="base model (diffusers folder, hub id, world, tiny, tiny-sd2, tiny-sdxl)")
    p.add_argument("--out", required=True, help="output folder (re-run with the same folder to resume)")
    p.add_argument("--prompts", default="auto",
                   help="auto (world on --model world, else dreambench) | dreambench | dreambench-object | dreambench-live | world | FILE ({} = concept)")
    p.add_argument("--images-per-prompt", type=int, default=4, help="seeds per prompt (the paper: 5)")
    p.add_argument("--max-prompts", type=int, default=0, help="only the first N prompts (0: all 25)")
    p.add_argument("--seed", type=int, default=0, help="image k of each prompt uses seed + k")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=8.0, help="classifier-free guidance scale")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    p.add_argument("--checkpoints", action="store_true", help="also evaluate <stem>-step<N> checkpoints (curves vs step)")
    p.add_argument("--references", action="append", default=[], metavar="NAME=DIR",
                   help="reference images of a concept (default: the training folder in the file's metadata)")
    p.add_argument("--clip", default=None, help="CLIP model (path or hub id) for CLIP-T / CLIP-I")
    p.add_argument("--dino", default=None, help="DINO / ViT model (path or hub id) for DINO-I")
    p.add_argument("--no-probes", action="store_true", help="do not use the built-in world's probes")
    p.add_argument("--lfd-data", default=None, help="images + metadata.jsonl (file_name, text) of non-customised concepts")
    p.add_argument("--lfd-samples", type=int, default=64, help="real latents for the latent Fisher divergence (0: skip)")
    p.add_argument("--lfd-repeats", type=int, default=1, help="(t, noise) draws per latent")
    p.add_argument("--device", default=None, help="device for scorers (default: the process's accelerate device)")
    p.set_defaults(func=run)


def run(args) -> int:
    from infusion.evaluation import EvalConfig, build_scorers, run_evaluation
    from infusion.evaluation.harness import process_state

    refs = {}
    for item in args.references:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--references {item!r}: write NAME=FOLDER")
        refs[name] = folder
    cfg = EvalConfig(
        model=args.model, files=list(args.files), out=args.out, prompts=args.prompts,
        images_per_prompt=args.images_per_prompt, max_prompts=args.max_prompts, seed=args.seed, steps=args.steps,
        guidance=args.guidance, batch_size=args.batch_size, checkpoints=args.checkpoints, references=refs,
        lfd_data=args.lfd_data, lfd_samples=args.lfd_samples, lfd_repeats=args.lfd_repeats,
    )
    device = args.device or str(process_state().device)
    scorers = build_scorers(args.model, args.clip, args.dino, device, probes=False if args.no_probes else None)
    summary = run_evaluation(cfg, scorers)
    if process_state().is_main_process:
        from pathlib import Path

        print((Path(args.out) / "table.md").read_text())
        print(f"per-image scores: {args.out}/per_image.csv, summary: {args.out}/summary.json, "
              f"{len(summary.get('grids', []))} grid(s), {len(summary.get('curves', []))} curve plot(s)")
    return 0
