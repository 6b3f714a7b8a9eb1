"""How good is the world model? Probe accuracy on rendered scenes and the base model's quality bar.

Quality bar (issue 3): on >= 500 images from held-out captions, the share of named attributes
shown: background and colour >= 80%, class and position >= 70%; for class-only prompts the
backgrounds and positions must vary (entropy of the probe's readings, in bits).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

from infusion.world import scenes
from infusion.world.dataset import HELD_OUT_SEED
from infusion.world.fidelity import NamedAttributes, judge, locate, parse_caption, read_scenes, text_fidelity

ATTRS = ("background", "cls", "color", "size", "position")


def _to_tensor(pil_images) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB")) for im in pil_images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def _full_named(scene: scenes.Scene) -> NamedAttributes:
    return NamedAttributes(scene.background, [{"cls": o.cls, "color": o.color, "size": o.size, "position": o.position} for o in scene.objects])


def _accumulate(total: dict, res: dict) -> None:
    for k, v in res.items():
        total.setdefault(k, []).extend(v)


def _summary(flags: dict) -> dict:
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in flags.items()}


@torch.no_grad()
def probe_accuracy(scene_probe, object_probe=None, n: int = 1000, batch: int = 250) -> dict[str, float]:
    """Accuracy of the probes on ``n`` held-out rendered scenes (every attribute named)."""
    flags: dict = {}
    obj_flags: dict = {}
    for start in range(0, n, batch):
        seeds = range(HELD_OUT_SEED + start, HELD_OUT_SEED + min(n, start + batch))
        sc = [scenes.sample_scene(s) for s in seeds]
        x = _to_tensor([scenes.render(s) for s in sc])
        for r, s in zip(read_scenes(scene_probe, x), sc):
            _accumulate(flags, judge(r, _full_named(s)))
        if object_probe is not None:
            from infusion.world.probes import COLOR2_OR_NONE, COLOR_NAMES, crop_object

            objs = [s.objects[0] for s in sc]
            out = object_probe(crop_object(x, [scenes.object_box(o) for o in objs]))
            pred = {k: v.argmax(-1).tolist() for k, v in out.items()}
            truth = {
                "cls": [scenes.CLASSES.index(o.cls) for o in objs],
                "color": [COLOR_NAMES.index(o.color) for o in objs],
                "pattern": [scenes.PATTERNS.index(o.pattern) for o in objs],
                "color2": [COLOR2_OR_NONE.index(o.color2 or "none") for o in objs],
            }
            _accumulate(obj_flags, {f"object_{k}": [a == b for a, b in zip(pred[k], truth[k])] for k in truth})
    return {**_summary(flags), **_summary(obj_flags)}


def heldout_captions(n: int) -> list[str]:
    """``n`` captions of held-out scenes (seeds from ``HELD_OUT_SEED``), attributes dropped as in training."""
    return [scenes.caption_scene(scenes.sample_scene(HELD_OUT_SEED + i), HELD_OUT_SEED + 7919 + i).text for i in range(n)]


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int = 50, guidance: float = 5.0, seed: int = 0, batch: int = 50) -> torch.Tensor:
    """(N, 3, 32, 32) images in [-1, 1], one per prompt."""
    out = []
    g = torch.Generator().manual_seed(seed)
    for i in tqdm(range(0, len(prompts), batch), desc="generate", mininterval=30):
        imgs = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="pt").images
        out.append(imgs * 2 - 1)
    return torch.cat(out)


def entropy_bits(values: list) -> float:
    counts = Counter(values)
    n = len(values)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


@torch.no_grad()
def evaluate_base(pipe, scene_probe, n: int = 500, per_class: int = 20, steps: int = 50, guidance: float = 5.0, seed: int = 0) -> dict:
    """Quality-bar figures of ``pipe``: attribute accuracies on ``n`` held-out captions, and the
    entropy of background and position over ``per_class`` images of each class-only prompt."""

    captions = heldout_captions(n)
    images = generate(pipe, captions, steps, guidance, seed)
    flags: dict = {}
    tf = []
    for r, c in zip(read_scenes(scene_probe, images), captions):
        named = parse_caption(c)
        _accumulate(flags, judge(r, named))
        tf.append(text_fidelity(r, named))
    result = {"n_images": n, "steps": steps, "guidance": guidance, "accuracy": _summary(flags), "text_fidelity": sum(tf) / len(tf)}
    bgs, poss, found = [], [], []
    class_prompts = [f"a photo of a {c}" for c in scenes.CLASSES for _ in range(per_class)]
    cimgs = generate(pipe, class_prompts, steps, guidance, seed + 1)
    for r, p in zip(read_scenes(scene_probe, cimgs), class_prompts):
        cls = p.split()[-1]
        s = locate(r, {"cls": cls})
        bgs.append(r.background)
        poss.append(s)
        found.append(r.cls[s] == cls)
    result["class_only"] = {
        "n_images": len(class_prompts),
        "class_shown": sum(found) / len(found),
        "background_entropy_bits": entropy_bits(bgs),
        "background_entropy_max": math.log2(len(scenes.BACKGROUNDS)),
        "position_entropy_bits": entropy_bits(poss),
        "position_entropy_max": math.log2(len(scenes.POSITIONS)),
    }
    return result


BAR = {"background": 0.8, "color": 0.8, "cls": 0.7, "position": 0.7}

HISTORY = """Training history (details and measurements: `docs/world.md`):
- VAE: 4,000 steps on 40,000 rendered scenes; its decoder alone was fine-tuned for 2,000 steps after the world's
  patterns were made coarse enough to survive the 4 x 4 px latent cells (the encoder, and so the latent space, is unchanged).
- UNet + text encoder: steps 0-1,299 jointly (epsilon-prediction, SD1.x schedule); text encoder frozen at its EMA
  from 1,300; UNet alone to 8,101. From 8,101: v-prediction on the zero-terminal-SNR schedule (trailing DDIM),
  the text encoder trains again (it had never separated "top" from "bottom"), TokenCompose's token loss (weight 0.1)
  keeps each class word's cross-attention inside its object; from 8,300 on the re-rendered world (coarse patterns,
  30% of objects patterned).
- From 13,200 the class word carries the object's look (so that Infusion's value residual on it can reach the look;
  measurements: `docs/results.md`, "Can the residual express the look at all?"): captions name a patterned
  object's pattern half the time and a quarter of each batch comes from 20,000 all-patterned scenes
  (`--name-patterns 0.5 --patterned-images 20000 --patterned-share 0.25`); to 18,972 half the captioned rows get the
  empty caption's EOS/padding states (`--summary-dropout 0.5`); to 24,055 `--summary-dropout 0.7 --hide-look-words
  0.9` (the look words get zero cross-attention weight in 90% of the captioned rows); to 30,448 also
  `--look-only-in-class-words` (in those rows every other position takes the look-free caption's state); to 35,079
  also `--look-in-class-values 0.5` (in half of those rows the class words give attn2 the look-free caption's key,
  so that their value alone tells the look under the plain caption's maps, as Infusion's customised stream and
  Perfusion's key lock assume); `infusion world train model` defaults to this recipe (`world/recipe.py`).
- The packaged MLM contextualizer (`../contextualizer.safetensors`) was pretrained on this text encoder: re-run
  `infusion mlm pretrain --model world --captions world --save-dtype float16 ...` whenever the text encoder trains."""


def readme_text(quality: dict, probe_acc: dict | None, state: dict | None, sizes: dict[str, float]) -> str:
    """The model folder's README.md: what the model is, how it was trained, what the probes measure."""
    acc = quality["accuracy"]
    co = quality["class_only"]
    rows = "\n".join(
        f"| {k} | {100 * acc[k]:.1f}% | {('>= ' + str(int(100 * BAR[k])) + '%') if k in BAR else '-'} | "
        f"{('met' if acc[k] >= BAR[k] else 'NOT met') if k in BAR else ''} |"
        for k in ATTRS
    )
    probe = ""
    if probe_acc:
        probe = "\n## Probe accuracy (1,000 held-out rendered scenes)\n\n" + "\n".join(f"- {k}: {100 * v:.1f}%" for k, v in probe_acc.items()) + "\n"
    st = state or {}
    return f"""# The built-in world model

A small Stable Diffusion (diffusers layout) trained from scratch by `infusion world train` on the
procedural world of `infusion.world.scenes`: 32 px images, AutoencoderKL to 4x8x8 latents, a CLIP
text encoder (width 64, 4 layers) over the real CLIP vocabulary (49,408 tokens), a UNet with
cross-attention (2 levels, 64/128 channels), DDIM scheduler. float32 safetensors, no download:

    StableDiffusionPipeline.from_pretrained(infusion.world.model_dir())

Sizes (MiB): {", ".join(f"{k} {v:.1f}" for k, v in sizes.items())}.
Training state: step {st.get("step", "?")} of the UNet + text encoder stage, batch {st.get("batch_size", "?")}
(EMA weights exported). Training continues from `checkpoints/world_train.safetensors`, which is not in the
tree (60 MB): restore it with `git show 34f4a6c:checkpoints/world_train.safetensors > checkpoints/world_train.safetensors`
(a full clone; `git fetch --unshallow` first after a `--depth 1` clone).

{HISTORY}

## Quality (probes on {quality["n_images"]} images from held-out captions, DDIM {quality["steps"]} steps, guidance {quality["guidance"]})

Each attribute a caption names is judged on its own by the scene probe: background; class (the class
appears); position (the class stands in the named slot); colour and size (read where the object stands:
its named slot when the class is there, else where the class is found).

| attribute named in the prompt | shown | bar | |
|---|---|---|---|
{rows}

Text fidelity (mean share of named attributes shown): {quality["text_fidelity"]:.3f}.

Class-only prompts ("a photo of a <class>", {co["n_images"]} images): class shown {100 * co["class_shown"]:.1f}%;
background entropy {co["background_entropy_bits"]:.2f} bits (max {co["background_entropy_max"]:.2f}),
position entropy {co["position_entropy_bits"]:.2f} bits (max {co["position_entropy_max"]:.2f}).
{probe}
Reproduce: `infusion world evaluate` (writes quality.json), `infusion world probe-eval`.
"""
