"""Is the built-in world a fair measuring stick? Three checks behind docs/results.md's first section.

1. ``learn``: can a method trained hard reproduce a concept's look at all? DreamBooth and Infusion
   settings on one concept, look rate on the training caption ("a photo of a <c>") and on held-out
   prompts.
2. ``switch``: when is the look decided? Sample with the base model for t >= tau and a DreamBooth model
   (from step 1) for t < tau; look rate per tau.
3. ``loss``: how much of the training loss can Infusion remove? Base vs customised diffusion loss on the
   concept's training images per timestep band, for each trained Infusion variant of step 1.

    python studies/world_fairness.py --out runs/fairness --doc docs/results/fairness.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LEARN = (  # tag, method, lr, steps, method args
    ("dreambooth, paper defaults (lr 5e-6, prior)", "dreambooth", 5e-6, 500, {}),
    ("dreambooth lr 1e-4, prior", "dreambooth", 1e-4, 300, {}),
    ("dreambooth lr 1e-4, prior, text encoder", "dreambooth", 1e-4, 300, {"train_text_encoder": True}),
    ("dreambooth lr 1e-4, no prior", "dreambooth", 1e-4, 300, {"prior_loss_weight": 0}),
    ("infusion lr 1e-2 (paper)", "infusion", 1e-2, 1000, {}),
    ("infusion lr 1e-1", "infusion", 1e-1, 1000, {}),
    ("infusion residual=query lr 1e-2", "infusion", 1e-2, 1000, {"residual": "query"}),
    ("infusion residual=query t_max=0.7", "infusion", 1e-2, 1000, {"residual": "query", "t_max": 0.7}),
    ("infusion paired=true", "infusion", 1e-2, 1000, {"paired": True}),
    ("infusion residual=query paired=true", "infusion", 1e-2, 1000, {"residual": "query", "paired": True}),
    ("infusion residual=query paired=true paired_strength=0.7", "infusion", 1e-2, 1000,
     {"residual": "query", "paired": True, "paired_strength": 0.7}),
    ("infusion residual=query paired=true paired_strength=0.7, 2000 steps", "infusion", 1e-2, 2000,
     {"residual": "query", "paired": True, "paired_strength": 0.7}),
    ("infusion residual=query paired=true paired_strength=0.85", "infusion", 1e-2, 1000,
     {"residual": "query", "paired": True, "paired_strength": 0.85}),
)


def _slug(tag: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in tag).strip("-")[:60]


def learn(out: Path, concept, n: int) -> list[dict]:
    import torch

    from infusion.customized import load_customized
    from infusion.evaluation.world_results import WorldReader
    from infusion.training import TrainConfig, train
    from infusion.world.concepts import eval_prompts, write_concept_images

    reader = WorldReader()
    images = out / "images" / concept.name
    write_concept_images(concept.name, images)
    rows = []
    for tag, method, lr, steps, margs in LEARN:
        rec_path = out / f"learn-{_slug(tag)}.json"
        if rec_path.is_file():
            rows.append(json.loads(rec_path.read_text()))
            continue
        dest = out / "runs" / (_slug(tag) + ("" if method == "dreambooth" else ".safetensors"))
        t0 = time.time()
        train(TrainConfig(model="world", images=str(images), name=concept.name, class_phrase=concept.class_phrase,
                          out=str(dest), method=method, lr=lr, steps=steps, method_args=margs), progress=False)
        secs = time.time() - t0
        gen = load_customized("world", [dest])
        tok = f"<{concept.name}>"
        row = {"tag": tag, "method": method, "lr": lr, "steps": steps, "method_args": margs, "train_seconds": secs,
               "path": str(dest)}
        for key, prompts in (("training_caption", [f"a photo of a {tok}"] * n), ("held_out", eval_prompts(concept.name)[:n])):
            ims = []
            for i, p in enumerate(prompts):
                ims += gen([p], generator=torch.Generator().manual_seed(i), num_inference_steps=25, guidance_scale=5.0).images
            rd = reader.read(ims, [p.replace(tok, concept.class_phrase) for p in prompts], concept)
            row[key] = {"look_rate": sum(r["look"] for r in rd) / len(rd),
                        "text_fidelity": sum(r["text_fidelity"] for r in rd) / len(rd),
                        "concept_fidelity": sum(r["concept_fidelity"] for r in rd) / len(rd)}
        rec_path.write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def switch(out: Path, concept, db_path: str, n: int) -> list[dict]:
    """Base model for t >= tau, the DreamBooth model for t < tau (same noise, CFG 5, DDIM 25)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from infusion.evaluation.world_results import WorldReader
    from infusion.core.base_models import load_base_pipeline

    reader = WorldReader()
    base = load_base_pipeline("world")
    db = StableDiffusionPipeline.from_pretrained(db_path)
    ident = json.loads((Path(db_path) / "infusion.json").read_text()).get("identifier", "sks")

    def enc(p, text):
        ids = p.tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
        return p.text_encoder(ids)[0]

    with torch.no_grad():
        e_base = torch.cat([enc(base, ""), enc(base, f"a photo of a {concept.class_phrase}")])
        e_db = torch.cat([enc(db, ""), enc(db, f"a photo of a {ident} {concept.class_phrase}")])
    sched = base.scheduler
    sched.set_timesteps(25)
    rows = []
    for tau in (1000, 900, 800, 700, 600, 500, 300, 0):
        ims = []
        for s in range(n):
            z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) * sched.init_noise_sigma
            with torch.no_grad():
                for t in sched.timesteps:
                    unet, e = (db.unet, e_db) if t < tau else (base.unet, e_base)
                    o = unet(sched.scale_model_input(torch.cat([z, z]), t), t, encoder_hidden_states=e).sample
                    z = sched.step(o[:1] + 5.0 * (o[1:] - o[:1]), t, z).prev_sample
                im = base.vae.decode(z / base.vae.config.scaling_factor).sample
            ims += base.image_processor.postprocess(im)
        rd = reader.read(ims, [f"a photo of a {concept.class_phrase}"] * n, concept)
        rows.append({"tau": tau, "look_rate": sum(r["look"] for r in rd) / n,
                     "training_background": sum(r["background"] == concept.background for r in rd) / n})
        print(rows[-1], flush=True)
    return rows


def loss(concept, paths: dict[str, str], images: Path) -> dict:
    """Diffusion loss (v-prediction MSE) of base and customised model on the training images per t band."""
    import torch
    from diffusers import DDPMScheduler

    from infusion.methods.infusion.concept import Concept
    from infusion.core.base_models import load_base_pipeline
    from infusion.methods.infusion.processor import InfusionPlan, install_processors
    from infusion.core.placeholders import parse_prompt
    from infusion.training.data import encode_latent_stats, load_concept_images

    p = load_base_pipeline("world")
    mean, std = encode_latent_stats(p.vae, load_concept_images(images, 32), flip=False)
    ns = DDPMScheduler.from_config(p.scheduler.config)
    sf = p.vae.config.scaling_factor
    pp = parse_prompt(f"a photo of a <{concept.name}>", {concept.name: concept.class_phrase}, p.tokenizer)
    ids = p.tokenizer([pp.text], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        st = p.text_encoder(ids)[0]
    procs = install_processors(p.unet)
    res = {}
    for tag, path in paths.items():
        c = Concept.load(path)
        for layer, pr in procs.items():
            pr.deltas = {c.name: c.deltas[layer].float()}
            pr.query_terms = {c.name: tuple(t.float() for t in c.query[layer])} if c.query else {}
        g = torch.Generator().manual_seed(0)
        bands = []
        with torch.no_grad():
            for lo in range(0, 1000, 200):
                n = 64
                idx = torch.randint(len(mean), (n,), generator=g)
                z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * sf
                noise = torch.randn(z0.shape, generator=g)
                t = torch.randint(lo, lo + 200, (n,), generator=g)
                zt, tgt = ns.add_noise(z0, noise, t), ns.get_velocity(z0, noise, t)
                plan = InfusionPlan.build("fused", n, list(range(n)), [pp.spans] * n)
                o = p.unet(torch.cat([zt, zt]), torch.cat([t, t]), encoder_hidden_states=st.expand(2 * n, -1, -1),
                           cross_attention_kwargs={"infusion": plan}).sample
                f, cc = o.chunk(2)
                bands.append({"t": f"{lo}-{lo + 199}", "base": float(((f - tgt) ** 2).mean()),
                              "customised": float(((cc - tgt) ** 2).mean())})
        res[tag] = bands
        print(tag, bands, flush=True)
    return res


def write_doc(doc: Path, concept, rows, sw, ls) -> None:
    lines = [f"Concept `<{concept.name}>`; look rate, text fidelity and concept fidelity on the training caption "
             "(\"a photo of a <c>\") and on held-out prompts; DDIM 25, guidance 5; `python studies/world_fairness.py`.", "",
             "| setting | steps | train s | look, training caption | look, held-out | text fid., held-out | concept fid., held-out |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tag']} | {r['steps']} | {r['train_seconds']:.0f} | {r['training_caption']['look_rate']:.2f} | "
                     f"{r['held_out']['look_rate']:.2f} | {r['held_out']['text_fidelity']:.2f} | "
                     f"{r['held_out']['concept_fidelity']:.3f} |")
    if sw:
        lines += ["", "Base model for t >= tau, DreamBooth (lr 1e-4, no prior) for t < tau, same noise: when is the look decided?", "",
                  "| tau | " + " | ".join(str(s["tau"]) for s in sw) + " |", "|---|" + "---|" * len(sw),
                  "| look rate | " + " | ".join(f"{s['look_rate']:.2f}" for s in sw) + " |",
                  "| training background | " + " | ".join(f"{s['training_background']:.2f}" for s in sw) + " |"]
    if ls:
        lines += ["", "Diffusion loss (v-prediction MSE) on the training images, base -> customised, per timestep band:", "",
                  "| Infusion variant | " + " | ".join(b["t"] for b in next(iter(ls.values()))) + " |",
                  "|---|" + "---|" * 5]
        for tag, bands in ls.items():
            lines.append(f"| {tag} | " + " | ".join(f"{b['base']:.3f} -> {b['customised']:.3f}" for b in bands) + " |")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")


def look_validation(doc: Path) -> dict:
    """The look rate on renders: every concept in 4 backgrounds x 3 positions x 2 sizes (near 100% wanted), and
    plain objects of its class in all 8 colours plus its pattern with 3 other second colours (0% wanted)."""
    from infusion.evaluation.world_results import WorldReader
    from infusion.world import scenes
    from infusion.world.concepts import CONCEPTS, concept_renders

    reader = WorldReader()
    rows = {}
    for name, c in CONCEPTS.items():
        ims, texts = concept_renders(name)
        others = [scenes.render(scenes.Scene(bg, (scenes.WorldObject(c.obj.cls, col, "large", "center"),), 5))
                  for col in scenes.COLORS for bg in ("grass", "night")]
        others += [scenes.render(scenes.Scene("sand", (scenes.WorldObject(c.obj.cls, c.obj.color, "large", "center",
                                                                            c.obj.pattern, col2),), 5))
                   for col2 in [x for x in scenes.COLORS if x not in (c.obj.color, c.obj.color2)][:3]]
        pos_rate = sum(r["look"] for r in reader.read(ims, texts, c)) / len(ims)
        neg_rate = sum(r["look"] for r in reader.read(others, [f"a large {c.obj.cls} in the center"] * len(others), c)) / len(others)
        rows[name] = {"renders": len(ims), "look_rate_on_concept": pos_rate, "other_looks": len(others),
                      "look_rate_on_other_looks": neg_rate}
    lines = ["| concept | renders of the concept | look rate | renders of other looks | look rate |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['renders']} | {r['look_rate_on_concept']:.1%} | {r['other_looks']} | {r['look_rate_on_other_looks']:.1%} |"
              for n, r in rows.items()]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--look-validation-only", action="store_true",
                    help="only the look rate on renders -> docs/results/look_validation.md (seconds)")
    ap.add_argument("--concept", default="sunball")
    ap.add_argument("--n", type=int, default=12, help="images per prompt set")
    ap.add_argument("--out", default="runs/fairness")
    ap.add_argument("--doc", default="docs/results/fairness.md")
    args = ap.parse_args(argv)
    import torch

    from infusion.world.concepts import get_concept

    torch.set_num_threads(1)
    look_validation(Path(args.doc).with_name("look_validation.md"))
    if args.look_validation_only:
        return 0
    concept = get_concept(args.concept)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = learn(out, concept, args.n)
    db = next(r["path"] for r in rows if r["method_args"] == {"prior_loss_weight": 0})
    sw = switch(out, concept, db, args.n)
    ls = loss(concept, {r["tag"]: r["path"] for r in rows if r["method"] == "infusion"}, out / "images" / concept.name)
    write_doc(Path(args.doc), concept, rows, sw, ls)
    (Path(args.doc).with_suffix(".json")).write_text(json.dumps({"learn": rows, "switch": sw, "loss": ls}, indent=1))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
