"""``infusion demo``: on the built-in world, train an Infusion concept from 5 images and show
base | customised images for held-out prompts, scored by the world's probes.

Two concepts are trained from the same images: the paper's Infusion (C takes F's attn2 maps) and the form
recommended on the world (``--method-arg preset=recommended``: C's own map of the concept's tokens places the
residual, trained at t < T/2), which on the world is what lets the residual draw the look's layout
(docs/variants.md). Writes ``<out>/grid.png`` (rows: prompts; columns: base | Infusion (paper) | Infusion,
recommended) and ``<out>/report.md`` (text fidelity, concept fidelity and look rate of each column, per prompt and
on average).
"""

from __future__ import annotations

import time
from pathlib import Path

from infusion.commands import HelpFormatter

DEMO_PROMPTS = 6  # held-out prompts shown (of the concept's 22)
DEMO_LR = 0.01  # see --lr
DEMO_STEPS = 1000
# --variants key -> (column title, Infusion's --method-arg settings)
DEMO_VARIANTS = {"paper": ("Infusion (paper)", {}), "recommended": ("Infusion, recommended", {"preset": "recommended"}),
                 "own": ("Infusion, maps=own", {"maps": "own"})}
DEMO_DEFAULT = "paper,recommended"
VARIANT_NOTES = {  # column title -> what the report says of it
    "Infusion (paper)": "- **Infusion (paper)**: the paper's method. C takes F's attn2 maps; only the concept token's value "
                        "gets a residual.",
    "Infusion, recommended": (
        "- **Infusion, recommended** (beyond the paper; `--method-arg preset=recommended`, i.e. `maps=own "
        "train_t_max=0.5`): the same residual, placed by C's own map of the concept token (its key is the class word's) "
        "instead of F's and trained at t < T/2; everything else in attn2 stays F's. On this world the look's layout (a "
        "half, a diagonal) is drawn where C's own image attends to the class word, which F's maps cannot follow "
        "(docs/variants.md)."),
    "Infusion, maps=own": "- **Infusion, maps=own** (`--variants own`): own maps alone, trained at every t.",
}


HELP = "train an Infusion concept on the built-in world and show base | customised images"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("demo", help=HELP, formatter_class=HelpFormatter)
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--concept", default="sunball", help="built-in world concept (see `infusion world concepts`)")
    p.add_argument("--model", default="world", help="the built-in world model, or a folder holding a snapshot of it")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help="Infusion training steps")
    p.add_argument("--lr", type=float, default=DEMO_LR,
                   help="Infusion learning rate (the paper's 0.01; on the world model, 1,000 steps, 8 held-out prompts: concept "
                        "fidelity of sunball 0.526/0.606/0.595/0.560 at lr 0.005/0.01/0.02/0.05, text fidelity falls above "
                        "0.01; studies/infusion_world.py, docs/world.md)")
    p.add_argument("--prompts", type=int, default=DEMO_PROMPTS, help="how many held-out prompts to show")
    p.add_argument("--variants", default=DEMO_DEFAULT,
                   help="which Infusion columns to train and show, comma-separated: paper (the paper's Infusion), "
                        "recommended (--method-arg preset=recommended), own (maps=own alone)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed (the same noise in every column)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is fastest for the small world model, and 40x faster than 2 when "
                        "another process keeps a core busy (OpenMP threads wait on each other)")
    p.set_defaults(func=run)


def _pick_prompts(prompts: list[str], k: int) -> list[str]:
    """``k`` prompts spread over the list (backgrounds, positions, sizes, other objects)."""
    if k >= len(prompts):
        return prompts
    step = len(prompts) / k
    return [prompts[int(i * step)] for i in range(k)]


def run(args) -> int:
    import torch

    from infusion.core.images import make_grid
    from infusion.world.concepts import get_concept

    if args.prompts < 1:
        raise ValueError(f"--prompts must be >= 1, got {args.prompts}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in DEMO_VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants: unknown {unknown or 'none given'}; use some of {', '.join(DEMO_VARIANTS)}")
    torch.set_num_threads(args.threads)
    concept = get_concept(args.concept)
    out = Path(args.out)
    t0 = time.time()
    runs = {}
    for v in variants:
        title, method_args = DEMO_VARIANTS[v]
        suffix = "".join(f"-{k}-{x}" for k, x in method_args.items())  # sunball.safetensors, sunball-maps-own.safetensors
        runs[title] = train_and_compare(concept.name, out, model=args.model, steps=args.steps, lr=args.lr,
                                        n_prompts=args.prompts, guidance=args.guidance, seed=args.seed,
                                        method_args=method_args, file_suffix=suffix)
    first = next(iter(runs.values()))
    refs = [im.resize((96, 96)) for im in first["references"]]
    rows = [[b, *(r["images"][i] for r in runs.values())] for i, b in enumerate(first["base_images"])]
    make_grid(rows, ["base", *runs], first["prompts"], cell=96).save(out / "grid.png")
    make_grid([refs], None, None, cell=96).save(out / "concept-images.png")
    (out / "report.md").write_text(_report(concept, first["prompts"], first["base_scores"], runs, time.time() - t0, args))
    took = ", ".join(f"{v} in {r['train_seconds']:.0f} s" for v, r in runs.items())
    print(f"demo: trained <{concept.name}> ({took}); wrote {out / 'grid.png'} and {out / 'report.md'}")
    return 0


def train_and_compare(name: str, out: Path, model: str = "world", steps: int = DEMO_STEPS, lr: float = DEMO_LR,
                      n_prompts: int = DEMO_PROMPTS, guidance: float = 5.0, seed: int = 0,
                      method_args: dict | None = None, file_suffix: str = "") -> dict:
    """Train Infusion on built-in concept ``name`` and render ``n_prompts`` of its held-out prompts
    with the base and the customised model (same noise), scored by the world's probes. ``method_args``:
    Infusion's ``--method-arg`` settings (e.g. ``{"maps": "own"}``; default: the paper's); the concept file is
    ``out/<name><file_suffix>.safetensors``.

    Returns ``{"prompts", "images", "base_images", "references" (PIL lists), "scores", "base_scores"
    (one {score: float} per image), "concept_file", "train_seconds"}``; writes the concept file and
    its training images under ``out``.
    """
    import torch

    from infusion.core.base_models import load_base_pipeline
    from infusion.methods.infusion.pipeline import InfusionPipeline
    from infusion.training import TrainConfig, train
    from infusion.world.concepts import (
        concept_images,
        eval_prompts,
        get_concept,
        write_concept_images,
    )
    from infusion.world.scorer import WorldProbeScorer

    concept = get_concept(name)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    write_concept_images(concept.name, out / "concept-images")
    base = load_base_pipeline(model)
    base.set_progress_bar_config(disable=True)
    cfile = out / f"{concept.name}{file_suffix}.safetensors"
    trained = train(
        TrainConfig(model=model, images=str(out / "concept-images"), name=concept.name, class_phrase=concept.class_phrase,
                    out=str(cfile), steps=steps, lr=lr, seed=seed, flip=False,  # no flips: the world has left and right
                    method_args=dict(method_args or {})),
        pipe=base,
    )
    t_train = time.time() - t0
    ipipe = InfusionPipeline.from_pipe(base)
    ipipe.set_progress_bar_config(disable=True)
    prompts = _pick_prompts(eval_prompts(concept.name), n_prompts)
    base_imgs, cust_imgs = [], []
    for i, prompt in enumerate(prompts):
        res = ipipe(prompt, concepts=[trained], num_inference_steps=50, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(seed + i))
        base_imgs.append(res.base_images[0])
        cust_imgs.append(res.images[0])
    texts = [p.replace(f"<{concept.name}>", concept.class_phrase) for p in prompts]
    scorer, references = WorldProbeScorer(), concept_images(concept.name)
    s_base, s_cust = (_per_image(scorer.score(ims, texts, references, concept.class_phrase)) for ims in (base_imgs, cust_imgs))
    return {"prompts": prompts, "images": cust_imgs, "base_images": base_imgs, "references": references, "scores": s_cust, "base_scores": s_base,
            "concept_file": cfile, "train_seconds": t_train}


def _per_image(scores: dict) -> list[dict]:
    """{score name: (N,) array} -> one {score name: float} per image."""
    return [dict(zip(scores, map(float, values))) for values in zip(*scores.values())]


def _report(concept, prompts, s_base, runs: dict, t_all, args) -> str:
    """``runs``: column name -> ``train_and_compare``'s result."""
    from infusion.world import scenes

    o = concept.obj

    def avg(scores, key):
        return sum(s[key] for s in scores) / len(scores)

    names = list(runs)
    trained = "; ".join(f"{n}: `{r['concept_file'].name}` ({r['concept_file'].stat().st_size:,} bytes, {r['train_seconds']:.0f} s)"
                        for n, r in runs.items())
    lines = [
        "# infusion demo on the built-in world",
        "",
        (f"Concept `<{concept.name}>`: a {o.color} {o.cls} with {scenes.PATTERN_LOOKS[o.pattern].format(o.color2)} (pattern "
         f"`{o.pattern}`; no word names it), "
         f"learnt from 5 images ({o.size}, {o.position}, {concept.background}; `concept-images.png`), "
         f"{args.steps} steps at lr {args.lr:g} each (demo total {t_all:.0f} s). {trained}."),
        "",
        *[VARIANT_NOTES[n] for n in names if n in VARIANT_NOTES],  # the columns this run trained, no others
        "",
        ("Scores by the world's probes (DESIGN section 4): **text fidelity** = share of the attributes the prompt names "
         "that the image shows (CLIP-T's role); **concept fidelity** = cosine similarity of the object's appearance "
         "embedding to the concept's training images (DINO-I's role); **look** = the object probe reads the concept's "
         f"look ({o.color} with {scenes.PATTERN_LOOKS[o.pattern].format(o.color2)}). Base = the unchanged model (class "
         "phrase only)."),
        "",
        ("| prompt | text fid. base | " + " | ".join(f"text fid. {n}" for n in names) + " | concept fid. base | "
         + " | ".join(f"concept fid. {n}" for n in names) + " |"),
        "|---|" + "---|" * (2 + 2 * len(names)),
    ]
    cols = [runs[n]["scores"] for n in names]
    for i, (p, b) in enumerate(zip(prompts, s_base)):
        lines.append(f"| {p} | {b['text_fidelity']:.2f} | " + " | ".join(f"{c[i]['text_fidelity']:.2f}" for c in cols)
                     + f" | {b['concept_fidelity']:.3f} | " + " | ".join(f"{c[i]['concept_fidelity']:.3f}" for c in cols) + " |")
    lines += ["| **mean** | " + " | ".join(f"**{avg(c, 'text_fidelity'):.2f}**" for c in [s_base, *cols]) + " | "
              + " | ".join(f"**{avg(c, 'concept_fidelity'):.3f}**" for c in [s_base, *cols]) + " |", ""]
    lines += [f"**Look rate** (share of images whose {o.cls} the object probe reads as {o.color} with "
              f"{scenes.PATTERN_LOOKS[o.pattern].format(o.color2)}, the concept's look): base {avg(s_base, 'look'):.0%}, "
              + ", ".join(f"{n} {avg(c, 'look'):.0%}" for n, c in zip(names, cols))
              + ". The reading is strict: the right two colours split along another line (a diagonal, a corner) "
              "are not the concept's look. How every method fares on the world, and why: docs/results.md.", ""]
    lines.append(f"Guidance {args.guidance}, DDIM 50 steps, seed {args.seed}. Grid: `grid.png` (rows: prompts; columns: "
                 f"base | {' | '.join(names)}; the same noise in every column).")
    return "\n".join(lines) + "\n"
