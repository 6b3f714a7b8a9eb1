"""Probes: small CNNs trained on the world's ground truth, the world's CLIP and DINO.

``SceneProbe`` reads a whole 32 px image: its background and, for each of the 5 position slots,
which class stands there (or none), its colour and its size. ``ObjectProbe`` reads a 16 px crop of
one object: class, colour, pattern and second colour; its penultimate features (``embed``) are the
appearance embedding that concept fidelity compares. Trained on rendered scenes with blur, noise
and shift augmentation, so they also read generated (softer) images.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from infusion.world import scenes
from infusion.world.dataset import to_model_range

log = logging.getLogger(__name__)

SLOTS = tuple(scenes.POSITIONS)  # 5 position slots
CLASS_OR_NONE = scenes.CLASSES + ("none",)
COLOR_NAMES = tuple(scenes.COLORS)
SIZE_NAMES = tuple(scenes.SIZES)
COLOR2_OR_NONE = COLOR_NAMES + ("none",)
CROP = 16


def _conv(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class SceneProbe(nn.Module):
    """(B, 3, 32, 32) in [-1, 1] -> dict of logits: background (B, 8), cls (B, 5, 7), color (B, 5, 8), size (B, 5, 2)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(_conv(3, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1), _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict(
            {
                "background": nn.Linear(256, len(scenes.BACKGROUNDS)),
                "cls": nn.Linear(256, len(SLOTS) * len(CLASS_OR_NONE)),
                "color": nn.Linear(256, len(SLOTS) * len(COLOR_NAMES)),
                "size": nn.Linear(256, len(SLOTS) * len(SIZE_NAMES)),
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.fc(self.body(x))
        out = {k: head(h) for k, head in self.heads.items()}
        for k in ("cls", "color", "size"):
            out[k] = out[k].view(len(x), len(SLOTS), -1)
        return out


class ObjectProbe(nn.Module):
    """(B, 3, 16, 16) crops -> logits cls (B, 6), color (B, 8), pattern (B, 7), color2 (B, 9); ``embed`` -> (B, 128)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(_conv(3, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 4 * w, 2), nn.Flatten(), nn.Linear(4 * w * 16, 128))
        self.heads = nn.ModuleDict(
            {
                "cls": nn.Linear(128, len(scenes.CLASSES)),
                "color": nn.Linear(128, len(COLOR_NAMES)),
                "pattern": nn.Linear(128, len(scenes.PATTERNS)),
                "color2": nn.Linear(128, len(COLOR2_OR_NONE)),
            }
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.silu(self.embed(x))
        return {k: head(h) for k, head in self.heads.items()}


# ----------------------------------------------------------------------------- data


def scene_targets(scene: scenes.Scene) -> dict[str, torch.Tensor]:
    """Ground truth of ``scene`` as SceneProbe targets (-100 = no target)."""
    cls = torch.full((len(SLOTS),), CLASS_OR_NONE.index("none"))
    color = torch.full((len(SLOTS),), -100)
    size = torch.full((len(SLOTS),), -100)
    for o in scene.objects:
        s = SLOTS.index(o.position)
        cls[s], color[s], size[s] = scenes.CLASSES.index(o.cls), COLOR_NAMES.index(o.color), SIZE_NAMES.index(o.size)
    return {"background": torch.tensor(scenes.BACKGROUNDS.index(scene.background)), "cls": cls, "color": color, "size": size}


def crop_object(images: torch.Tensor, boxes: list[tuple[int, int, int, int]], pad: float = 0.15) -> torch.Tensor:
    """(B, 3, H, W) images and one (l, t, r, b) pixel box each -> (B, 3, 16, 16) crops (box widened by ``pad``)."""
    out = []
    for img, (l, t, r, b) in zip(images, boxes):
        p = pad * (r - l)
        l, t, r, b = int(round(l - p)), int(round(t - p)), int(round(r + p)), int(round(b + p))
        H, W = img.shape[-2:]
        pl, pt = max(0, -l), max(0, -t)
        padded = F.pad(img[None], (pl, max(0, r - W), pt, max(0, b - H)), mode="replicate")
        crop = padded[..., t + pt : b + pt, l + pl : r + pl]
        out.append(F.interpolate(crop, size=(CROP, CROP), mode="bilinear", align_corners=False, antialias=True)[0])
    return torch.stack(out)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur (half the batch), noise and a +-2 px shift: (B, 3, H, W) -> same shape."""
    b = len(x)
    blur = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    pick = (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()
    x = pick * blur + (1 - pick) * x
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.1
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


# ----------------------------------------------------------------------------- training


@dataclass
class ProbeConfig:
    images: str = "runs/world/images.safetensors"  # rendered training images (seeds 0..N-1)
    out: str = ""  # "" = the packaged probes file
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1


def probes_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("infusion") / "world" / "probes.safetensors"))


def _object_batch(seeds: list[int], images: torch.Tensor, rng: random.Random):
    """Crops (B, 3, 16, 16) of one object of each image (``images[k]`` renders ``seeds[k]``) and their targets."""
    crops, tgt = [], {"cls": [], "color": [], "pattern": [], "color2": []}
    for i, seed in enumerate(seeds):
        scene = scenes.sample_scene(seed)
        o = rng.choice(scene.objects)
        l, t, r, b = scenes.object_box(o)
        j = [rng.uniform(-1.5, 1.5) for _ in range(2)]
        crops.append(crop_object(images[i : i + 1], [(l + j[0], t + j[1], r + j[0], b + j[1])])[0])
        tgt["cls"].append(scenes.CLASSES.index(o.cls))
        tgt["color"].append(COLOR_NAMES.index(o.color))
        tgt["pattern"].append(scenes.PATTERNS.index(o.pattern))
        tgt["color2"].append(COLOR2_OR_NONE.index(o.color2 or "none"))
    return torch.stack(crops), {k: torch.tensor(v) for k, v in tgt.items()}


def train_probes(cfg: ProbeConfig):
    from safetensors.torch import load_file

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    images_u8 = load_file(cfg.images)["images"]
    n = len(images_u8)
    targets = [scene_targets(scenes.sample_scene(i)) for i in tqdm(range(n), desc="targets", mininterval=30)]
    scene_probe, object_probe = SceneProbe(), ObjectProbe()
    params = list(scene_probe.parameters()) + list(object_probe.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="probes", mininterval=30)
    for step in bar:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        x = to_model_range(images_u8[idx])
        out = scene_probe(augment(x, gen))
        loss = 0.0
        for k in ("background", "cls", "color", "size"):
            t = torch.stack([targets[i][k] for i in idx.tolist()])
            loss = loss + F.cross_entropy(out[k].reshape(-1, out[k].shape[-1]), t.reshape(-1), ignore_index=-100)
        half = cfg.batch_size // 2
        crops, otgt = _object_batch(idx.tolist()[:half], x[:half], rng)
        oout = object_probe(augment(crops, gen))
        for k, t in otgt.items():
            loss = loss + F.cross_entropy(oout[k], t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    save_probes(scene_probe, object_probe, cfg.out or probes_path(), {"config": asdict(cfg)})
    return scene_probe, object_probe


def save_probes(scene_probe: SceneProbe, object_probe: ObjectProbe, path, meta: dict) -> None:
    tensors = {f"scene.{k}": v.contiguous() for k, v in scene_probe.state_dict().items()}
    tensors.update({f"object.{k}": v.contiguous() for k, v in object_probe.state_dict().items()})
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "infusion-world-probes", "version": "1", "meta": json.dumps(meta)})
    tmp.replace(path)


def load_probes(path=None) -> tuple[SceneProbe, ObjectProbe]:
    """The trained probes (eval mode); raises ``FileNotFoundError`` if they were never trained."""
    path = Path(path or probes_path())
    if not path.exists():
        raise FileNotFoundError(f"no probe weights at {path}; train them with `infusion world train probes`")
    scene_probe, object_probe = SceneProbe(), ObjectProbe()
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    scene_probe.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("scene.")})
    object_probe.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("object.")})
    return scene_probe.eval(), object_probe.eval()
