"""``infusion world ...``: render scenes, train the world model and its probes, sample, evaluate."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from infusion.commands import HelpFormatter

log = logging.getLogger(__name__)


HELP = "the built-in world: scenes, model, probes, concepts"  # the line in `infusion --help` (read without running register)


def register(subparsers) -> None:
    p = subparsers.add_parser("world", help=HELP, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="world_command", required=True, metavar="ACTION")

    r = sub.add_parser("render", help="render scenes (PNG) with captions and ground truth (JSON lines)",
                       formatter_class=HelpFormatter)
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--n", type=int, default=16, help="how many scenes")
    r.add_argument("--seed", type=int, default=0, help="first scene seed")
    r.set_defaults(func=_render)

    c = sub.add_parser("concept-images", help="write a built-in concept's training images",
                       formatter_class=HelpFormatter)
    c.add_argument("name", help="built-in concept name (see `infusion world concepts`)")
    c.add_argument("--out", required=True, help="output folder")
    c.set_defaults(func=_concept_images)

    ls = sub.add_parser("concepts", help="list built-in concepts and their evaluation prompts",
                       formatter_class=HelpFormatter)
    ls.set_defaults(func=_concepts)

    t = sub.add_parser("train", help="train (or resume) a stage of the world model: vae, decoder (VAE decoder only), "
                                     "model (UNet + text encoder) or probes", formatter_class=HelpFormatter)
    t.add_argument("stage", choices=("vae", "decoder", "model", "probes"))
    t.add_argument("--max-minutes", type=float, default=None, help="stop after a checkpoint once this much time is spent "
                   "(default: no limit)")
    t.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the stage's)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    t.add_argument("--export-dir", default="", help="model stage: diffusers folder to export to (default: the packaged model folder)")
    t.add_argument("--checkpoint", default=None, help="model stage: training checkpoint to resume from and write "
                                                      "(default: checkpoints/world_train.safetensors)")
    # the defaults are the recipe the shipped world was last trained with (world/recipe.py), so a plain resume
    # continues it; 0 / --no-look-only-in-class-words turn each part off
    from infusion.world.recipe import SHIPPED_RECIPE as R

    t.add_argument("--name-patterns", type=float, default=R["name_patterns"],
                   help="model stage: probability that a caption names a patterned object's pattern (default: %(default)s, "
                        "the shipped world's; 0 before step 13,200)")
    t.add_argument("--patterned-images", type=int, default=R["patterned_images"],
                   help="model stage: size of the all-patterned set (0: none; default: %(default)s)")
    t.add_argument("--patterned-share", type=float, default=R["patterned_share"],
                   help="model stage: share of each batch from the patterned set (default: %(default)s)")
    t.add_argument("--summary-dropout", type=float, default=R["summary_dropout"],
                   help="model stage: probability that a caption's EOS and padding states are replaced by the empty caption's, "
                        "so that the UNet reads an object's look from its words (default: %(default)s)")
    t.add_argument("--hide-look-words", type=float, default=R["hide_look_words"],
                   help="model stage: probability that a caption's look words (colours, 'and', pattern words) are hidden "
                        "from the UNet's cross-attention, so that it reads the look from the class word (default: %(default)s)")
    t.add_argument("--look-only-in-class-words", action=argparse.BooleanOptionalAction, default=R["look_only_in_class_words"],
                   help="model stage, with --hide-look-words: the hidden rows' other positions take the states of the caption "
                        "without its look words, so that only the class words carry the look (default: %(default)s)")
    t.add_argument("--look-in-class-values", type=float, default=R["look_in_class_values"],
                   help="model stage, with --look-only-in-class-words: probability that such a row's class words give attn2 "
                        "the look-free caption's key and only their value tells the look, as key-locked methods and Infusion "
                        "assume (default: %(default)s)")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="generate images with the world model", formatter_class=HelpFormatter)
    s.add_argument("prompt", nargs="+")
    s.add_argument("--out", required=True, help="PNG grid path")
    s.add_argument("--model", default=None, help="diffusers folder (default: the packaged world model)")
    s.add_argument("--n", type=int, default=4, help="images per prompt")
    s.add_argument("--steps", type=int, default=50, help="DDIM sampling steps")
    s.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    s.add_argument("--seed", type=int, default=0, help="first seed (one per image)")
    s.set_defaults(func=_sample)

    e = sub.add_parser("probe-eval", help="probe accuracy on held-out rendered scenes", formatter_class=HelpFormatter)
    e.add_argument("--n", type=int, default=1000, help="held-out scenes rendered and read")
    e.set_defaults(func=_probe_eval)

    q = sub.add_parser("evaluate", help="the base model's quality bar (probes on generated images); writes JSON",
                       formatter_class=HelpFormatter)
    q.add_argument("--model", default=None, help="diffusers folder (default: the packaged world model)")
    q.add_argument("--n", type=int, default=500, help="images generated and read")
    q.add_argument("--steps", type=int, default=50, help="DDIM sampling steps")
    q.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    q.add_argument("--out", default=None, help="JSON path (default: <model>/quality.json)")
    q.add_argument("--readme", action="store_true", help="also write the figures into <model>/README.md")
    q.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    q.set_defaults(func=_evaluate)


def _minutes(args) -> float:
    """``--max-minutes``, no limit when left out."""
    return 1e9 if args.max_minutes is None else args.max_minutes


def _render(args) -> int:
    from infusion.world import scenes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "captions.jsonl", "w") as f:
        for seed in range(args.seed, args.seed + args.n):
            image, caption, attrs = scenes.example(seed)
            image.save(out / f"{seed:08d}.png")
            f.write(json.dumps({"file": f"{seed:08d}.png", "caption": caption.text, "named": caption.named, "attributes": attrs}) + "\n")
    print(f"wrote {args.n} scenes to {out}")
    return 0


def _concept_images(args) -> int:
    from infusion.world.concepts import write_concept_images

    paths = write_concept_images(args.name, args.out)
    print(f"wrote {len(paths)} images of <{args.name}> to {args.out}")
    return 0


def _concepts(args) -> int:
    from infusion.world import scenes
    from infusion.world.concepts import CONCEPTS, eval_prompts

    for name, c in CONCEPTS.items():
        o = c.obj
        print(f"<{name}>  class {c.class_phrase!r}: {o.color} with {scenes.PATTERN_LOOKS[o.pattern].format(o.color2)} ({o.pattern}); "
              f"trained {o.size}, {o.position}, on {c.background}")
        print(f"    {len(eval_prompts(name))} eval prompts, e.g. {eval_prompts(name)[-1]!r}")
    return 0


def _check_threads(threads: int) -> None:
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")


def _train(args) -> int:
    _check_threads(args.threads)
    if args.stage == "vae":
        from infusion.world.train_model import ModelConfig
        from infusion.world.train_vae import VAEConfig, finish_vae, train_vae

        if Path(ModelConfig.checkpoint).exists():
            raise ValueError(
                f"the UNet stage has started ({ModelConfig.checkpoint} exists) and trains on this VAE's latents: "
                "the VAE is frozen now. Delete that checkpoint to start the world model over."
            )

        cfg = VAEConfig(max_minutes=_minutes(args), threads=args.threads, **({"steps": args.steps} if args.steps else {}))
        train_vae(cfg)
        finish_vae(cfg)
    elif args.stage == "decoder":
        from infusion.world.train_vae import DecoderConfig, finetune_decoder

        finetune_decoder(DecoderConfig(max_minutes=_minutes(args), threads=args.threads, **({"steps": args.steps} if args.steps else {})))
    elif args.stage == "model":
        from infusion.world.recipe import SHIPPED_RECIPE
        from infusion.world.train_model import ModelConfig, train_model

        train_model(ModelConfig(max_minutes=_minutes(args), threads=args.threads, export_dir=args.export_dir,
                                **{k: getattr(args, k) for k in SHIPPED_RECIPE},
                                **({"steps": args.steps} if args.steps else {}),
                                **({"checkpoint": args.checkpoint} if args.checkpoint else {})))
    else:
        from infusion.world.probes import ProbeConfig, train_probes

        train_probes(ProbeConfig(threads=args.threads, **({"steps": args.steps} if args.steps else {})))
    return 0


def _load_pipe(model):
    from diffusers import StableDiffusionPipeline

    from infusion.world import model_dir

    path = Path(model) if model else model_dir()
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no diffusers model at {path} (model_index.json missing); train it with `infusion world train model`")
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe, path


def _sample(args) -> int:
    import torch

    from infusion.world.train_model import sample_grid

    pipe, _ = _load_pipe(args.model)
    torch.manual_seed(args.seed)
    sample_grid(pipe, Path(args.out), prompts=args.prompt, per_prompt=args.n, steps=args.steps, guidance=args.guidance)
    print(f"wrote {args.out}")
    return 0


def _probe_eval(args) -> int:
    from infusion.world.probes import load_probes
    from infusion.world.quality import probe_accuracy

    scene_probe, object_probe = load_probes()
    acc = probe_accuracy(scene_probe, object_probe, n=args.n)
    for k, v in acc.items():
        print(f"{k:>16}: {100 * v:.1f}%")
    return 0


def _evaluate(args) -> int:
    import torch

    from infusion.world.probes import load_probes
    from infusion.world.quality import evaluate_base

    _check_threads(args.threads)
    torch.set_num_threads(args.threads)
    pipe, path = _load_pipe(args.model)
    scene_probe, object_probe = load_probes()
    res = evaluate_base(pipe, scene_probe, n=args.n, steps=args.steps, guidance=args.guidance)
    out = Path(args.out) if args.out else path / "quality.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    if args.readme:
        from infusion.world.quality import probe_accuracy, readme_text

        state_file = path / "training_state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        sizes = {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20 for d in sorted(path.iterdir()) if d.is_dir()}
        (path / "README.md").write_text(readme_text(res, probe_accuracy(scene_probe, object_probe), state, sizes))
        print(f"wrote {path / 'README.md'}")
    return 0
