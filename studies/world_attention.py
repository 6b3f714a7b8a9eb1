"""How localised are a world model's cross-attention maps? Infusion's residual rides on the class
word's map, so a flat map makes the customised stream repaint the background.

For held-out rendered scenes with their captions, noised to timestep t: the share of each class
word's attention mass (mean over heads) inside its object's box, per ``attn2`` layer, next to the
box's share of the image (what a flat map would give); and how far apart the text encoder holds
position words. Several models side by side.

    python studies/world_attention.py MODEL_DIR [MODEL_DIR ...] [--n 64] [--t 250,500,750] [--out FILE.json]

``--within CONCEPT`` asks what a value residual can paint *inside* the object: on the concept's renders (its
training caption, plain class word), per ``attn2`` layer at the latent's full resolution and per head, the
correlation across the object's cells between the class word's map and the share of each cell in the concept's
second colour (a head whose map follows the pattern lets Delta colour that part differently), and the spread of
the map inside the object (coefficient of variation; 0: flat).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def inside_shares(model_dir: str, n: int, timesteps: list[int], seed: int = 0) -> dict:
    """``{layer: {t: mean inside share}}`` plus ``"_flat"``: the mean box share of the latent grid."""
    from diffusers import StableDiffusionPipeline

    from infusion.world import scenes
    from infusion.world.dataset import HELD_OUT_SEED
    from infusion.world.dataset import to_model_range
    from infusion.world.token_loss import object_mask, class_token_targets, inside_share, install_recorders

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    unet, tok = pipe.unet, pipe.tokenizer
    recorders = install_recorders(unet)
    sc = [scenes.sample_scene(HELD_OUT_SEED + i) for i in range(n)]
    texts = [scenes.caption_scene(s, HELD_OUT_SEED + 7919 + i).text for i, s in enumerate(sc)]
    x = to_model_range(torch.from_numpy(np.stack([np.array(scenes.render(s)) for s in sc])))
    z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    cond = pipe.text_encoder(ids)[0]
    targets = class_token_targets(ids, sc, tok)
    g = torch.Generator().manual_seed(seed)
    out: dict = {}
    for t in timesteps:
        tt = torch.full((n,), t, dtype=torch.long)
        zt = pipe.scheduler.add_noise(z0, torch.randn(z0.shape, generator=g), tt)
        unet(zt, tt, cond)
        for name, rec in recorders.items():
            out.setdefault(name.replace(".processor", ""), {})[t] = inside_share(rec.maps, targets).mean().item()
    grids = {int(round(rec.maps.shape[2] ** 0.5)) for rec in recorders.values()}
    flat = [object_mask(o, scenes.IMAGE_SIZE, g).mean().item() for g in grids for _, _, o in targets]
    out["_flat"] = float(np.mean(flat))
    return out


@torch.no_grad()
def position_word_cosines(model_dir: str) -> dict[str, float]:
    """Cosine of the text encoder's last hidden states of "top" vs "bottom" and "left" vs "right" in
    otherwise equal captions (near 1: the UNet cannot tell the words apart)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(f"{model_dir}/tokenizer")
    te = CLIPTextModel.from_pretrained(f"{model_dir}/text_encoder").eval()

    def state(text: str, word: str) -> torch.Tensor:
        ids = tok(text, return_tensors="pt").input_ids
        return te(ids)[0][0, ids[0].tolist().index(tok.convert_tokens_to_ids(word + "</w>"))]

    pairs = {"top/bottom": ("a photo of a red ball at the {} left", "top", "bottom"),
             "left/right": ("a photo of a red ball at the top {}", "left", "right")}
    return {k: torch.cosine_similarity(state(t.format(a), a), state(t.format(b), b), dim=0).item() for k, (t, a, b) in pairs.items()}


@torch.no_grad()
def within_object(model_dir: str, concept_name: str, timesteps: list[int], n: int = 32, seed: int = 0,
                  on_plain: bool = False) -> dict:
    """``{layer: {t: {"corr": [per head], "cv": [per head]}}}`` over ``n`` renders of the concept (jitter seeds);
    ``on_plain``: the maps of the same scenes with a plain object (what F meets at sampling time, where it draws its
    own object), correlated with where the concept's second colour would be."""
    from dataclasses import replace

    from diffusers import StableDiffusionPipeline

    from infusion.world import scenes
    from infusion.world.concepts import concept_scene, get_concept
    from infusion.world.dataset import to_model_range
    from infusion.world.token_loss import class_token_targets, install_recorders, object_mask

    c = get_concept(concept_name)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    unet, tok = pipe.unet, pipe.tokenizer
    recorders = install_recorders(unet)
    sc = [concept_scene(c.name, 1000 + i) for i in range(n)]
    plain = [scenes.Scene(s.background, tuple(replace(o, pattern="plain", color2=None) for o in s.objects), s.jitter_seed)
             for s in sc]
    arr = lambda ss: np.stack([np.array(scenes.render(s)) for s in ss]).astype(np.float32)  # noqa: E731
    im, im_plain = arr(sc), arr(plain)
    second = torch.from_numpy((np.abs(im - im_plain).sum(-1) > 30).astype(np.float32))[:, None]  # (n, 1, 32, 32)
    x = to_model_range(torch.from_numpy((im_plain if on_plain else im).astype(np.uint8)))
    z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    grid = z0.shape[-1]
    ids = tok([f"a photo of a {c.class_phrase}"] * n, padding="max_length", max_length=77, return_tensors="pt").input_ids
    cond = pipe.text_encoder(ids)[0]
    tok_at = class_token_targets(ids, sc, tok)[0][1]
    share = torch.nn.functional.adaptive_avg_pool2d(second, grid).flatten(1)  # (n, grid^2) second colour per cell
    inside = torch.stack([object_mask(s.objects[0], scenes.IMAGE_SIZE, grid) for s in sc]) > 0.5  # (n, grid^2)
    g = torch.Generator().manual_seed(seed)
    out: dict = {"_cells_inside": float(inside.sum(1).float().mean())}
    for t in timesteps:
        tt = torch.full((n,), t, dtype=torch.long)
        unet(pipe.scheduler.add_noise(z0, torch.randn(z0.shape, generator=g), tt), tt, cond)
        for name, rec in recorders.items():
            maps = rec.maps  # (n, H, N, L)
            if maps.shape[2] != grid * grid:
                continue
            corr, cv = [], []
            for h in range(maps.shape[1]):
                cs, vs = [], []
                for i in range(n):
                    a, m = maps[i, h, inside[i], tok_at], share[i, inside[i]]
                    vs.append(float(a.std() / a.mean().clamp_min(1e-12)))
                    if a.std() > 0 and m.std() > 0:
                        cs.append(float(torch.corrcoef(torch.stack([a, m]))[0, 1]))
                corr.append(float(np.mean(cs)) if cs else float("nan"))
                cv.append(float(np.mean(vs)))
            out.setdefault(name.replace(".processor", ""), {})[t] = {"corr": corr, "cv": cv}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--t", default="250,500,750")
    ap.add_argument("--out", default=None)
    ap.add_argument("--within", default=None, metavar="CONCEPT", help="the class word's map inside the concept's object")
    ap.add_argument("--plain", action="store_true", help="with --within: maps of the object drawn plain (as F draws it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ts = [int(v) for v in args.t.split(",")]
    if args.within:
        res = {m: within_object(m, args.within, ts, on_plain=args.plain) for m in args.models}
        for m, r in res.items():
            print(f"{Path(m).name}, <{args.within}>: class-word map inside the object ({r['_cells_inside']:.1f} latent cells), "
                  "per head: correlation with the second colour's share / coefficient of variation")
            print("| layer | " + " | ".join(f"t={t}" for t in ts) + " |")
            print("|---|" + "---|" * len(ts))
            for layer, v in r.items():
                if layer.startswith("_"):
                    continue
                print(f"| {layer} | " + " | ".join(
                    ", ".join(f"{c:+.2f}/{s:.2f}" for c, s in zip(v[t]["corr"], v[t]["cv"])) for t in ts) + " |")
        if args.out:
            Path(args.out).write_text(json.dumps({"concept": args.within, "plain": args.plain, "timesteps": ts, "models": res},
                                                 indent=1) + "\n")
        return 0
    res = {m: inside_shares(m, args.n, ts) for m in args.models}
    layers = [k for k in res[args.models[0]] if k != "_flat"]
    print("class-word attention mass inside its object's box (flat map: "
          + ", ".join(f"{res[m]['_flat']:.3f}" for m in args.models) + ")")
    print("| layer | " + " | ".join(f"{Path(m).name} t={t}" for m in args.models for t in ts) + " |")
    print("|---|" + "---|" * (len(ts) * len(args.models)))
    for layer in layers:
        print(f"| {layer} | " + " | ".join(f"{res[m][layer][t]:.3f}" for m in args.models for t in ts) + " |")
    cos = {m: position_word_cosines(m) for m in args.models}
    for m, c in cos.items():
        print(f"{Path(m).name}: text-encoder cosine " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"n": args.n, "timesteps": ts, "models": res, "position_word_cosine": cos}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
