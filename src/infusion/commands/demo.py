"""``infusion demo``: train a concept and generate base | customised images, end to end.

Until the built-in world ships, this runs on the tiny random model: it exercises every step,
but its images are noise.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="train + generate on a built-in model, end to end")
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    import PIL.Image
    import torch

    from ..images import make_grid
    from ..pipeline import InfusionPipeline
    from ..tiny import tiny_sd_pipeline
    from ..training import TrainConfig, train

    out = Path(args.out)
    print("NOTE: the built-in world model is not available yet: this demo runs on a tiny RANDOM model, "
          "so its images are noise. It shows that training, saving, loading and generation run end to end.")
    images = out / "concept-images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(5):  # a striped square: stands in for a personal concept
        a = np.full((64, 64, 3), 230, np.uint8)
        a[16:48, 16:48] = (200, 40, 40)
        a[16:48:6, 16:48] = (30, 30, 200)
        a = np.clip(a.astype(int) + rng.integers(-10, 10, a.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(a).save(images / f"{i}.png")
    base = tiny_sd_pipeline()
    concept = train(TrainConfig(model="tiny", images=str(images), name="mybox", class_phrase="box",
                                out=str(out / "mybox.safetensors"), steps=args.steps), pipe=base)
    pipe = InfusionPipeline.from_pipe(base)
    prompts = ["a photo of <mybox> on the beach", "a <mybox> in the snow", "a red ball next to a <mybox>"]
    rows = []
    for i, prompt in enumerate(prompts):
        res = pipe(prompt, concepts=[concept], num_inference_steps=25, generator=torch.Generator().manual_seed(i))
        rows.append([res.base_images[0], res.images[0]])
    grid = make_grid(rows, ["base", "customised"], prompts)
    grid.save(out / "grid.png")
    (out / "report.md").write_text(
        "# infusion demo (tiny random model)\n\nImages are noise: the model is untrained. "
        f"Concept file: `{out / 'mybox.safetensors'}` ({(out / 'mybox.safetensors').stat().st_size} bytes).\n"
    )
    print(f"wrote {out / 'grid.png'} and {out / 'report.md'}")
    return 0
