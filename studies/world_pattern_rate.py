"""How often does the base world model draw a patterned object? (Infusion can only steer toward
appearances the base model's decoder and UNet can produce.)

For class-only prompts ("a photo of a large <class>", ``--per-class`` seeds each): the object probe's
pattern reading of the generated object (found by the scene probe). Training data: 30% patterned.

    python studies/world_pattern_rate.py [--model DIR] [--per-class 16]
"""

from __future__ import annotations

import argparse
import collections
import json

import torch


def main(argv=None) -> int:
    from diffusers import StableDiffusionPipeline

    from infusion.world import model_dir, scenes
    from infusion.world.fidelity import locate, read_scenes, slot_box
    from infusion.world.probes import crop_object, load_probes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(model_dir()))
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    scene_probe, object_probe = load_probes()
    counts: collections.Counter = collections.Counter()
    for cls in scenes.CLASSES:
        x = pipe([f"a photo of a large {cls}"] * args.per_class, num_inference_steps=50, guidance_scale=5.0,
                 generator=torch.Generator().manual_seed(0), output_type="pt").images * 2 - 1
        boxes = [slot_box(r, locate(r, {"cls": cls})) for r in read_scenes(scene_probe, x)]
        with torch.no_grad():
            read = object_probe(crop_object(x, boxes))["pattern"].argmax(-1).tolist()
        counts.update(scenes.PATTERNS[i] for i in read)
    n = sum(counts.values())
    print(json.dumps({"model": args.model, "n_images": n, "pattern_share": {k: round(v / n, 3) for k, v in counts.most_common()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
