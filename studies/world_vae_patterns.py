"""Which of the world's patterns survive the VAE? (A pattern the latents cannot carry can never be
generated, so no customisation method can learn a concept built on it.)

For held-out scenes of large objects, one per (class, pattern): the object probe's pattern
accuracy on the rendered image and on its VAE reconstruction (encode -> latent mean -> decode),
per pattern; and a picture: rows of classes, original above reconstruction, one column per pattern.

    python studies/world_vae_patterns.py [--vae runs/world/vae] [--out docs/world]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    from diffusers import AutoencoderKL
    from PIL import Image

    from infusion.world import model_dir, scenes
    from infusion.world.dataset import to_model_range
    from infusion.world.probes import crop_object, load_probes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", default=str(model_dir() / "vae"), help="diffusers VAE folder (default: the packaged model's)")
    ap.add_argument("--out", default="runs/world_vae_patterns")
    ap.add_argument("--per-cell", type=int, default=8, help="scenes per (class, pattern) for the accuracy")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    _, object_probe = load_probes()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bgs = scenes.BACKGROUNDS
    hits = {p: {"original": [], "reconstruction": []} for p in scenes.PATTERNS}
    rows = []
    for ci, cls in enumerate(scenes.CLASSES):
        for k in range(args.per_cell):
            sc = [scenes.Scene(bgs[(ci + k) % len(bgs)], (scenes.WorldObject(cls, "yellow" if k % 2 else "red", "large", "center", p,
                                                                                None if p == "plain" else ("blue" if k % 2 else "white")),),
                               jitter_seed=1000 * ci + k) for p in scenes.PATTERNS]
            x = to_model_range(torch.from_numpy(np.stack([np.array(scenes.render(s)) for s in sc])))
            with torch.no_grad():
                rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
                boxes = [scenes.object_box(s.objects[0]) for s in sc]
                for name, imgs in (("original", x), ("reconstruction", rec)):
                    pred = object_probe(crop_object(imgs, boxes))["pattern"].argmax(-1).tolist()
                    for p, q in zip(scenes.PATTERNS, pred):
                        hits[p][name].append(scenes.PATTERNS[q] == p)
            if k == 0:
                to_u8 = lambda t: ((t + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
                rows += [np.concatenate(list(to_u8(x)), 1), np.concatenate(list(to_u8(rec)), 1)]
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(out / "vae_patterns.png")
    table = {p: {k: float(np.mean(v)) for k, v in d.items()} for p, d in hits.items()}
    (out / "vae_patterns.json").write_text(json.dumps({"vae": args.vae, "n_per_pattern": len(hits["plain"]["original"]), "pattern_accuracy": table}, indent=1) + "\n")
    print("| pattern | probe on original | probe on VAE reconstruction |\n|---|---|---|")
    for p, d in table.items():
        print(f"| {p} | {100 * d['original']:.0f}% | {100 * d['reconstruction']:.0f}% |")
    print(f"wrote {out / 'vae_patterns.png'} and {out / 'vae_patterns.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
