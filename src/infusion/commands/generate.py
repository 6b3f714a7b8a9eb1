"""``infusion generate``: images of one or more concepts in the scenes prompts describe."""

from __future__ import annotations

import sys
from pathlib import Path

from infusion.commands import HelpFormatter

HELP = "generate images with trained concepts"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("generate", help=HELP,
                       description="Images of trained concepts in the scenes a prompt describes: write a concept as "
                                   "<name> in the prompt (several Infusion concepts compose in one prompt).",
                       epilog="example: infusion generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 "
                              "--concept mycat.safetensors --prompt 'a photo of <mycat> on the beach' --num-images 4 "
                              "--out out/ --show-base",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="base model (diffusers folder, .safetensors, hub id, world, tiny, tiny-sd2, tiny-sdxl)")
    p.add_argument("--concept", action="append", default=[],
                   help="output of `infusion train`, any method: file or folder (repeatable for infusion and ti)")
    p.add_argument("--prompt", required=True, help='e.g. "a photo of <mycat> on the beach"')
    p.add_argument("--negative-prompt", default=None, help="what the images should not show (may name a concept)")
    p.add_argument("--num-images", type=int, default=1, help="images, one per seed: --seed, --seed + 1, ...")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=8.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed+i")
    p.add_argument("--height", type=int, default=None, help="px, a multiple of 8 (default: the model's size)")
    p.add_argument("--width", type=int, default=None, help="px, a multiple of 8 (default: the model's size)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--show-base", action="store_true", help="also write the base model's images and a base|customised grid")
    p.add_argument("--model-config", default=None, help="configs for a single-file checkpoint")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from infusion.core.base_models import load_base_pipeline
    from infusion.core.images import make_grid, save_png
    from infusion.core.placeholders import find_placeholders
    from infusion.customized import load_customized
    from infusion.methods.infusion.pipeline import InfusionPipeline

    if args.num_images < 1:
        raise ValueError("--num-images must be >= 1")
    if args.steps < 1:
        raise ValueError("--steps must be >= 1")
    if Path(args.out).is_file():
        raise ValueError(f"--out {args.out} is a file: give a folder (the images are written as 000.png, 001.png, ...)")
    for c in args.concept:
        if not Path(c).exists():
            raise FileNotFoundError(f"concept file not found: {c}")
    gens = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gens, height=args.height,
                  width=args.width)
    if args.concept:
        model = load_customized(args.model, args.concept, model_config=args.model_config)
        if not set(find_placeholders(args.prompt)) & set(model.names):
            print(f"infusion generate: the prompt names no loaded concept, so the images are the base model's: write "
                  f"{' or '.join(f'<{n}>' for n in model.names)} where it goes", file=sys.stderr)
        out = model([args.prompt] * args.num_images, negative_prompt=args.negative_prompt, return_base=args.show_base,
                    **common)
        pipe = model.pipe
    else:  # no concept: the base model (the Infusion pipeline runs it unchanged)
        pipe = load_base_pipeline(args.model, pipeline_cls=InfusionPipeline, config=args.model_config)
        out = pipe([args.prompt] * args.num_images, negative_prompt=args.negative_prompt, return_base=True, **common)
    folder = Path(args.out)
    params = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "model": args.model,
              "concepts": [str(c) for c in args.concept], "steps": args.steps, "guidance": args.guidance,
              "sampler": type(pipe.scheduler).__name__}
    for i, im in enumerate(out.images):
        save_png(im, folder / f"{i:03d}.png", {**params, "seed": args.seed + i, "stream": "customised"})
        if args.show_base:
            save_png(out.base_images[i], folder / f"{i:03d}-base.png", {**params, "seed": args.seed + i, "stream": "base"})
    if args.show_base:
        grid = make_grid([[b, c] for b, c in zip(out.base_images, out.images)], ["base", "customised"],
                         [f"seed {args.seed + i}" for i in range(args.num_images)])
        grid.save(folder / "grid.png")
    print(f"wrote {len(out.images)} image(s) to {folder}" + (f" (grid: {folder / 'grid.png'})" if args.show_base else ""))
    return 0
