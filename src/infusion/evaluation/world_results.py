"""Every method side by side on the built-in world (the paper's Table 1, Figs. 9-11), one resumable run.

For each concept and each row (a method, a variant, or a method with the MLM regulariser):
  1. ``default``: ``infusion train`` exactly as a new user gets it (no lr, no steps given);
  2. ``tuned``: a small sweep (learning rates x checkpoint steps), each point scored on the concept's
     **validation** prompts (``world.concepts.validation_prompts``, disjoint from the test prompts);
     the point with the best ``selection_score`` is then scored on the test prompts;
  3. test scoring (``score_setting``): test prompts x seeds (text fidelity, concept fidelity, look rate,
     background leak, position and size obedience), "a photo of a <c>" x seeds (diversity: background
     and position entropy, training-background share), prompts without the concept (other classes, and
     the concept's class: agnostic text fidelity, class leak), latent Fisher divergence on real world
     latents of non-customised captions, W2 between customised and base latents, and the cost.
The curves (Figs. 9-11) are the figures stage's (``evaluation.world_figures``), which reuses this run's training,
loading and generation.

Every finished unit (a training run, a sweep point's score, a test score) is a JSON record
under ``out/records``; a second run skips what is recorded, so the run resumes after an interruption or in
a later session from the committed records. Same seeds and noise for every row.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from infusion.core.base_models import BUILTIN
from infusion.core.customization_files import storage_bytes
from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic
from infusion.evaluation.harness import EvalConfig, decode, lfd_dataset, load_generator
from infusion.methods import get_spec
from infusion.metrics.eps import UNetEps
from infusion.metrics.fisher import latent_fisher_divergence
from infusion.metrics.wasserstein import DEFAULT_POOL, latent_w2, pool_latents
from infusion.training import TrainConfig, train
from infusion.training.trainer import state_path, step_path
from infusion.world import scenes
from infusion.world.concepts import concept_images, eval_prompts, get_concept, validation_prompts, write_concept_images
from infusion.world.fidelity import ObjectLook, concept_looks, judge, locate, parse_caption, read_scenes
from infusion.world.probes import SLOTS
from infusion.world.scorer import WorldProbeScorer, _to_tensor

BASE_ROW = "base"
PAPER_ROW = "infusion"  # the row of the paper's Infusion (the method at its defaults); the page tests its claims


@dataclass(frozen=True)
class Row:
    """One line of the table: a method with fixed method args (and maybe the MLM regulariser)."""

    name: str
    method: str
    method_args: dict = field(default_factory=dict, hash=False, compare=False)
    mlm_lambda: float = 0.0
    lrs: tuple = ()  # the tuned sweep's learning rates

    def train_kwargs(self) -> dict:
        kw = {"method": self.method, "method_args": dict(self.method_args)}
        if self.mlm_lambda:
            kw.update(mlm_lambda=self.mlm_lambda, contextualizer="world", mlm_prompts="world")
        return kw


PROTOCOL = 2  # docs/protocol.md; records of another protocol are not resumed (1: the rows and rules before it)
RECOMMENDED_ROW = "infusion-recommended"

# docs/protocol.md's rows; sweep grids: two learning rates around each method's default, x3-x10 apart.
WORLD_ROWS = (
    Row("ti", "ti", {}, 0.0, (2e-3, 2e-2)),
    Row("pplus", "pplus", {}, 0.0, (2e-3, 2e-2)),
    Row("dreambooth", "dreambooth", {}, 0.0, (1e-5, 1e-4)),
    Row("lora", "lora", {}, 0.0, (1e-4, 1e-3)),
    Row("custom-diffusion", "custom-diffusion", {}, 0.0, (4e-5, 4e-4)),
    Row("perfusion", "perfusion", {}, 0.0, (5e-3, 2e-2)),
    Row("ti+mlm", "ti", {"with_class": True}, 5e-5, (2e-3, 2e-2)),  # the MLM authors write TI's concept "<tok> <class>"
    Row("pplus+mlm", "pplus", {}, 2.5e-4, (2e-3, 2e-2)),
    Row("dreambooth+mlm", "dreambooth", {"train_text_encoder": True}, 1e-3, (1e-5, 1e-4)),
    Row("custom-diffusion+mlm", "custom-diffusion", {}, 1e-3, (4e-5, 4e-4)),
    Row(PAPER_ROW, "infusion", {}, 0.0, (0.01, 0.05)),
    Row(RECOMMENDED_ROW, "infusion", {"preset": "recommended"}, 0.0, (0.01, 0.03)),
)


@dataclass
class Preset:
    """How big a run is. ``full``: the committed doc; ``small``: the test suite's plumbing check."""

    model: str = "world"
    concepts: tuple = ("sunball", "slashbox", "halfmug", "halfstar", "duotree")
    rows: tuple = WORLD_ROWS
    sweep_steps: tuple = (250, 500, 1000)  # checkpoints scored on validation prompts
    test_seeds: int = 2
    test_prompts: int = 0  # 0: all 22
    val_prompts: int = 12  # docs/protocol.md: every validation prompt, 2 seeds, a text-fidelity floor
    val_seeds: int = 2
    text_floor: float = 0.02  # a sweep point is eligible at >= the base's validation text fidelity - this
    diversity_seeds: int = 8
    agnostic_prompts: int = 8
    lfd_samples: int = 32
    ddim_steps: int = 25
    guidance: float = 5.0
    batch_size: int = 4


PRESETS = {
    "full": Preset(),
    "small": Preset(model="tiny", concepts=("sunball",), rows=(Row("infusion", "infusion", {}, 0.0, (0.01,)),
                                                               Row("ti", "ti", {}, 0.0, (5e-3,))),
                    sweep_steps=(1, 2), test_seeds=1, test_prompts=2, val_prompts=2, diversity_seeds=2,
                    agnostic_prompts=2, lfd_samples=2, ddim_steps=2,
                    batch_size=1),
}


# ----------------------------------------------------------------------------- records


def model_fingerprint(model: str) -> str:
    """What the records were measured on: a built-in random model's name, else the first 16 hex digits of a
    SHA-256 over the UNet's and text encoder's weight files (a retrained world makes every record stale)."""
    import hashlib

    if model in BUILTIN and model != "world":
        return model
    if model == "world":
        from infusion.world import model_dir

        model = str(model_dir())
    h = hashlib.sha256()
    for sub in ("unet", "text_encoder"):
        for f in sorted((Path(model) / sub).glob("*.safetensors")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Records:
    """One JSON file per finished unit: ``out/records/<key>.json``; ``get`` None when not done yet."""

    def __init__(self, out: Path):
        self.dir = Path(out) / "records"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.dir / (key.replace("/", "__") + ".json")

    def get(self, key: str):
        p = self._path(key)
        return json.loads(p.read_text()) if p.is_file() else None

    def put(self, key: str, value) -> None:
        p = self._path(key)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
        tmp.replace(p)

    def all(self) -> dict:
        return {p.stem.replace("__", "/"): json.loads(p.read_text()) for p in sorted(self.dir.glob("*.json"))}


# ----------------------------------------------------------------------------- prompt sets


def test_prompt_set(name: str, preset: Preset) -> list[str]:

    ps = eval_prompts(name)
    return ps[: preset.test_prompts] if preset.test_prompts else ps


def agnostic_prompts(name: str, n: int) -> list[str]:
    """Prompts without the concept: half other classes, half the concept's own class (class leak)."""
    import random

    c = get_concept(name)
    rng = random.Random(4242 + len(name))
    bgs = [b for b in scenes.BACKGROUNDS]
    out = []
    for k in range(n):
        cls = c.obj.cls if k % 2 else rng.choice([x for x in scenes.CLASSES if x != c.obj.cls])
        out.append(f"a photo of a {cls} {scenes.BACKGROUND_PHRASES[rng.choice(bgs)][0]}")
    return out


def grid_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``n`` test prompts (the pictures' rows)."""
    return sorted({int(i * n / k) for i in range(min(k, n))})


def grid_prompts(name: str, preset: "Preset", k: int = 4) -> list[str]:
    ps = test_prompt_set(name, preset)
    return [ps[i] for i in grid_indices(len(ps), k)]


# ----------------------------------------------------------------------------- scoring


def entropy_bits(values: list) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``values``."""
    n = len(values)
    if n == 0:
        return float("nan")
    return max(0.0, float(-sum((k / n) * math.log2(k / n) for k in Counter(values).values())))  # no "-0.0"


class WorldReader:
    """Reads generated world images with the probes: text fidelity, concept fidelity, look, background, slot."""

    def __init__(self):

        self.scorer = WorldProbeScorer()
        self._references: dict[str, list] = {}  # concept name -> its training images, rendered once

    @torch.no_grad()
    def read(self, images, texts: list[str], concept) -> list[dict]:
        """One dict per image: text_fidelity, concept_fidelity, look (bool), background, slot, judged attributes."""

        if concept.name not in self._references:
            self._references[concept.name] = concept_images(concept.name)
        scores = self.scorer.score(images, texts, self._references[concept.name], concept.class_phrase)
        x = _to_tensor(images, scenes.IMAGE_SIZE)
        readings = read_scenes(self.scorer.scene_probe, x)
        target = ObjectLook.of(concept.obj)
        out = []
        for i, (r, t) in enumerate(zip(readings, texts)):
            named = parse_caption(t)
            obj = next((o for o in named.objects if o["cls"] == concept.obj.cls), {"cls": concept.obj.cls})
            look = concept_looks(self.scorer.object_probe, x[i : i + 1], [r], obj)[0]
            s = locate(r, {"cls": concept.obj.cls})  # the slot most likely to hold the concept's class
            out.append({
                "text_fidelity": float(scores["text_fidelity"][i]),
                "concept_fidelity": float(scores["concept_fidelity"][i]),
                "look": look == target,
                "look_read": look.describe(),
                "background": r.background,
                "slot": SLOTS[s] if r.cls[s] == concept.obj.cls else "none",
                "judged": {k: [bool(b) for b in v] for k, v in judge(r, named).items()},
                "objects": [[SLOTS[j], c] for j, c in enumerate(r.cls) if c != "none"],  # what stands where (scene kept)
            })
        return out


def pooled_list(latents: torch.Tensor) -> list[list[float]]:
    """Latents (N, 4, h, w) -> their W2 features (``pool_latents``: N x 16), rounded for a compact record."""
    return [[round(float(v), 5) for v in row] for row in pool_latents(latents, DEFAULT_POOL)]


def png_b64(image) -> str:
    """A PIL image as base64 PNG text (pictures inside JSON records: a figure is drawn from records alone)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def image_of(b64: str):
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return float(np.mean(xs)) if xs else float("nan")


def summarise(test: list[dict], test_prompts: list[str], diversity: list[dict], agnostic: list[dict],
              agnostic_prompts_: list[str], concept) -> dict:
    """Per-image readings -> the table's metrics (definitions in docs/results.md)."""

    own_bg = concept.background
    other_bg = [r for r, p in zip(test, test_prompts) if (parse_caption(p).background or own_bg) != own_bg]
    own_cls = [r for r, p in zip(agnostic, agnostic_prompts_) if f" {concept.obj.cls} " in f" {p} "]
    judged = lambda rs, k: [b for r in rs for b in r["judged"].get(k, [])]  # noqa: E731
    return {
        "text_fidelity": _mean(r["text_fidelity"] for r in test),
        "concept_fidelity": _mean(r["concept_fidelity"] for r in test),
        "look_rate": _mean(r["look"] for r in test),
        "background_leak": _mean(r["background"] == own_bg for r in other_bg),
        "position_obedience": _mean(judged(test, "position")),
        "size_obedience": _mean(judged(test, "size")),
        "diversity_background_bits": entropy_bits([r["background"] for r in diversity]),
        "diversity_position_bits": entropy_bits([r["slot"] for r in diversity]),
        "diversity_training_background": _mean(r["background"] == own_bg for r in diversity),
        "diversity_look_rate": _mean(r["look"] for r in diversity),
        "agnostic_text_fidelity": _mean(r["text_fidelity"] for r in agnostic),
        "class_leak": _mean(r["look"] for r in own_cls),
    }


def choose(points: list[tuple[dict, object]], base_text_fidelity: float, floor: float) -> tuple[object, bool]:
    """docs/protocol.md's rule: among the points whose validation text fidelity is at least the base model's minus
    ``floor``, the best ``selection_score``; when none is, the highest text fidelity. ``points``: (validation
    record, what the point is) -> (the chosen point, whether it met the floor)."""
    eligible = [pt for pt in points if pt[0]["text_fidelity"] >= base_text_fidelity - floor]
    if eligible:
        return max(eligible, key=lambda pt: pt[0]["selection_score"])[1], True
    return max(points, key=lambda pt: (pt[0]["text_fidelity"], pt[0]["selection_score"]))[1], False


def selection_score(val: dict) -> float:
    """How a sweep point is chosen on validation prompts: look rate + text fidelity (both in [0, 1]),
    concept fidelity / 10 to break ties. A point that learns the look but stops obeying the prompt loses
    to one that does both."""
    return val["look_rate"] + val["text_fidelity"] + 0.1 * val["concept_fidelity"]


# ----------------------------------------------------------------------------- generation


def generate(gen, prompts: list[str], seeds: list[int], preset: Preset, latents_out: bool = False):
    """One image per (prompt, seed), same noise for every model: -> PIL images (and latents (N, 4, h, w))."""

    lat = []
    for p in prompts:
        for s in seeds:
            out = gen([p], generator=torch.Generator().manual_seed(s), num_inference_steps=preset.ddim_steps,
                      guidance_scale=preset.guidance, output_type="latent")
            lat.append(out.images[0:1] if torch.is_tensor(out.images) else torch.as_tensor(out.images[0:1]))
    lat = torch.cat(lat)
    images = decode(gen.pipe, lat)
    return (images, lat) if latents_out else images


# ----------------------------------------------------------------------------- the run


class ResultsRun:
    """Runs (or resumes) a preset into ``out``; see the module docstring."""

    def __init__(self, out: str | Path, preset: Preset, log=print, image_records: str | Path | None = None):
        self.out = Path(out)
        self.preset = preset
        self.image_records = Path(image_records) if image_records is not None else None  # per-image JSON lines
        self.records = Records(self.out)
        self.log = log
        self._reader = None
        self._base = None

    # -- helpers ----------------------------------------------------------------------------
    @property
    def reader(self) -> WorldReader:
        if self._reader is None:
            self._reader = WorldReader()
        return self._reader

    def base_pipe(self):
        if self._base is None:
            from infusion.core.base_models import load_base_pipeline

            self._base = load_base_pipeline(self.preset.model)
            self._base.set_progress_bar_config(disable=True)
        return self._base

    def images_dir(self, name: str) -> Path:

        d = self.out / "images" / name
        if not d.is_dir():
            write_concept_images(name, d)
        return d

    def claim(self, unit: str) -> bool:
        """Take ``unit`` for this process (a lock file holding host and pid), so that two processes (two
        cores) share one work list; a lock whose process is gone (another session) is taken over."""
        import os
        import socket

        d = self.out / "locks"
        d.mkdir(parents=True, exist_ok=True)
        lock = d / (unit.replace("/", "__") + ".lock")
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = lock.read_text().partition(" ")
                alive = host == socket.gethostname() and pid.isdigit() and _pid_alive(int(pid))
                if alive and pid != str(os.getpid()):
                    return False
                lock.unlink(missing_ok=True)
                continue
            os.write(fd, me.encode())
            os.close(fd)
            return True
        return False

    def release(self, unit: str) -> None:
        (self.out / "locks" / (unit.replace("/", "__") + ".lock")).unlink(missing_ok=True)

    def units(self) -> list[tuple]:
        """The work list: the base model, then ("table", row, concept), concept by concept."""
        p = self.preset
        return [("base", None, c) for c in p.concepts] + [("table", r, c) for c in p.concepts for r in p.rows]

    def progress(self, units: list[tuple]) -> str:
        """How far the work list is, and its pace so far: "12 of 65 done; 53 left, 14 min a unit (from 9 timed)"."""
        keys = [f"done/{kind}/{row.name if row else BASE_ROW}/{name}" for kind, row, name in units]
        done = [self.records.get(k) for k in keys]
        timed = [d["seconds"] for d in done if d and "seconds" in d]
        n = sum(d is not None for d in done)
        pace = f", {sum(timed) / len(timed) / 60:.0f} min a unit (from {len(timed)} timed)" if timed else ""
        return f"{n} of {len(keys)} done; {len(keys) - n} left{pace}"

    def run(self, units: list[tuple] | None = None, handlers: dict | None = None) -> None:
        """Every unit the records lack (``units``: another stage's list, e.g. the figures'; ``handlers``: kind ->
        ``f(row, concept)`` for the kinds this class does not know)."""
        units = units if units is not None else self.units()
        for kind, row, name in units + units:  # a second pass takes up units another process left unfinished
            unit = f"{kind}/{row.name if row else BASE_ROW}/{name}"
            if self.records.get(f"done/{unit}") is not None or not self.claim(unit):
                continue
            self.log(f"[{time.strftime('%H:%M:%S')}] {unit} ({self.progress(units)})")
            t0 = time.time()
            try:
                concept = get_concept(name)
                if kind == "base":
                    self.score_setting(BASE_ROW, concept, None, f"test/{BASE_ROW}/{name}/base", None, grid_prompts=4)
                elif kind == "table":
                    self.table_unit(row, concept)
                else:
                    handlers[kind](row, concept)
                # seconds: this process's time on the unit (a unit resumed from sub-unit records counts only its rest)
                self.records.put(f"done/{unit}", {"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  "seconds": round(time.time() - t0, 1)})
            finally:
                self.release(unit)

    # -- training ---------------------------------------------------------------------------
    def train(self, row: Row, concept, tag: str, lr=None, steps=None, checkpoint_every: int = 0) -> dict:
        """Train ``row`` on ``concept`` (record ``train/<row>/<concept>/<tag>``); returns the record."""

        key = f"train/{row.name}/{concept.name}/{tag}"
        rec = self.records.get(key)
        if rec is not None and Path(rec["out"]).exists():
            return rec
        ext = "" if get_spec(row.method).output == "folder" else ".safetensors"
        out = self.out / "runs" / row.name / concept.name / f"{tag}{ext}"
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        kw = dict(model=self.preset.model, images=str(self.images_dir(concept.name)), name=concept.name,
                  class_phrase=concept.class_phrase, out=str(out), lr=lr, checkpoint_every=checkpoint_every,
                  batch_size=self.preset.batch_size, **row.train_kwargs())
        if steps is not None:
            kw["steps"] = steps
        cfg = TrainConfig(**kw)
        t0 = time.time()
        train(cfg, progress=False)
        seconds = time.time() - t0

        n_params = int(read_safetensors(state_path(out), "training state")[1].get("trainable_parameters", -1))
        rec = {"out": str(out), "trainable_parameters": n_params, "steps": cfg.steps, "lr": lr, "seconds": seconds, "seconds_per_step": seconds / cfg.steps,
               "file_bytes": storage_bytes(out), "config": json.loads(json.dumps(cfg.to_dict(), default=str))}
        self.records.put(key, rec)
        return rec

    def checkpoint_path(self, train_rec: dict, step: int) -> str:

        return train_rec["out"] if step == train_rec["steps"] else str(step_path(train_rec["out"], step))

    def load(self, path: str | None):

        return load_generator(self.preset.model, path, base_pipe=self.base_pipe())

    # -- scoring ----------------------------------------------------------------------------
    def score_validation(self, row: Row | None, concept, path: str | None, key: str) -> dict:
        """The validation prompts' scores of one checkpoint (``path`` None: the base model, with the class phrase)."""
        rec = self.records.get(key)
        if rec is not None:
            return rec
        p = self.preset
        prompts = validation_prompts(concept.name)[: p.val_prompts]
        texts = [q.replace(f"<{concept.name}>", concept.class_phrase) for q in prompts]
        gen = self.load(path)
        seeds = list(range(100, 100 + p.val_seeds))
        ims = generate(gen, texts if path is None else prompts, seeds, p)
        texts = [q for q in texts for _ in seeds]
        rd = self.reader.read(ims, texts, concept)
        rec = {"look_rate": _mean(r["look"] for r in rd), "text_fidelity": _mean(r["text_fidelity"] for r in rd),
               "concept_fidelity": _mean(r["concept_fidelity"] for r in rd), "n_images": len(rd)}
        rec["selection_score"] = selection_score(rec)
        self.records.put(key, rec)
        return rec

    def score_setting(self, row_name: str, concept, path: str | None, key: str, train_rec: dict | None,
                      grid_prompts: int = 0) -> dict:
        """The test metrics of one model (``path`` None: the base model) -> record ``key``."""
        rec = self.records.get(key)
        if rec is not None:
            return rec

        p = self.preset
        tok = f"<{concept.name}>"
        sub = lambda qs: [q.replace(tok, concept.class_phrase) for q in qs]  # noqa: E731
        gen = self.load(path)
        asked = sub if path is None else (lambda qs: qs)  # the base model reads the class phrase, as a user writes it
        seeds = list(range(p.test_seeds))
        tprompts = test_prompt_set(concept.name, p)
        t0 = time.time()
        test_ims, test_lat = generate(gen, asked(tprompts), seeds, p, latents_out=True)
        sec_per_image = (time.time() - t0) / len(test_ims)
        test_texts = [q for q in sub(tprompts) for _ in seeds]
        div_ims = generate(gen, asked([f"a photo of a {tok}"]), list(range(200, 200 + p.diversity_seeds)), p)
        agn = agnostic_prompts(concept.name, p.agnostic_prompts)
        agn_ims = generate(gen, agn, [300], p)
        rd = self.reader
        test_read = rd.read(test_ims, test_texts, concept)
        summary = summarise(test_read, test_texts,
                            rd.read(div_ims, [f"a photo of a {concept.class_phrase}"] * len(div_ims), concept),
                            rd.read(agn_ims, agn, concept), agn, concept)
        shown = set(grid_indices(len(tprompts), grid_prompts)) if grid_prompts else set()
        self.write_images(row_name, concept, key, tprompts, seeds, test_read, test_lat, test_ims, shown)
        base_lat_path = self.out / "latents" / f"{concept.name}-base.safetensors"
        if path is None:
            save_safetensors_atomic({"latents": test_lat}, base_lat_path)
            summary["w2_to_base"] = 0.0
            summary["lfd"] = 0.0
        else:
            if base_lat_path.is_file():
                base_lat = read_safetensors(base_lat_path, "base latents")[0]["latents"]
                summary["w2_to_base"] = latent_w2(base_lat, test_lat)
            lfd = self.lfd(gen, per_latent=True)
            summary["lfd"] = lfd.mean if lfd is not None else float("nan")
            summary["lfd_per_latent"] = [] if lfd is None else [round(float(v), 7) for v in lfd.per_sample]
        summary.update({"seconds_per_image": sec_per_image, "n_test_images": len(test_ims)})
        if train_rec is not None:
            summary.update({k: train_rec[k] for k in ("steps", "lr", "seconds_per_step", "file_bytes")})
            summary["trainable_parameters"] = train_rec.get("trainable_parameters")
            summary["train_seconds"] = train_rec["seconds_per_step"] * train_rec["steps"]
        if grid_prompts:
            gdir = self.out / "grids" / concept.name
            gdir.mkdir(parents=True, exist_ok=True)
            for i, j in enumerate(grid_indices(len(tprompts), grid_prompts)):
                test_ims[j * len(seeds)].save(gdir / f"{row_name}-{i:02d}.png")
        self.records.put(key, summary)
        return summary

    def write_images(self, row_name: str, concept, key: str, prompts: list[str], seeds: list[int], readings: list[dict],
                     latents: torch.Tensor, images, shown: set) -> None:
        """One JSON line per test image (``image_records`` set): what the probes read, the W2 features, and the
        picture of the grid's prompts (seed ``seeds[0]``): every later table and Fig. 7 from records, never rerun."""
        if self.image_records is None:
            return
        setting = key.rsplit("/", 1)[-1]
        self.image_records.mkdir(parents=True, exist_ok=True)
        pooled = pooled_list(latents)
        lines = []
        for i, (q, s) in enumerate((q, s) for q in prompts for s in seeds):
            r = readings[i]
            line = {"row": row_name, "concept": concept.name, "setting": setting, "prompt": q, "seed": s,
                    "text_fidelity": round(r["text_fidelity"], 4),
                    "concept_fidelity": None if math.isnan(r["concept_fidelity"]) else round(r["concept_fidelity"], 4),
                    "look": bool(r["look"]), "background": r["background"], "objects": r["objects"],
                    "judged": r["judged"], "pooled": pooled[i]}
            if i // len(seeds) in shown and s == seeds[0]:
                line["image"] = png_b64(images[i])
            lines.append(json.dumps(line))
        path = self.image_records / f"{row_name}__{concept.name}__{setting}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)

    @torch.no_grad()
    def lfd(self, gen, per_latent: bool = False):
        """Latent Fisher divergence base vs ``gen`` on real world latents of non-customised captions (the mean; with
        ``per_latent`` the ``LFDResult`` with every latent's value, or None without data)."""

        if not hasattr(self, "_lfd_data"):
            cfg = EvalConfig(model=self.preset.model if self.preset.model == "world" else "other", files=["-"],
                             out=str(self.out), lfd_samples=self.preset.lfd_samples)
            self._lfd_data = lfd_dataset(cfg, self.base_pipe())
        if self._lfd_data is None:
            return None if per_latent else float("nan")
        z, caps = self._lfd_data
        base = UNetEps.from_pipeline(self.base_pipe())
        res = latent_fisher_divergence(base, gen.eps, z, caps, self.base_pipe().scheduler, progress=False)
        return res if per_latent else res.mean

    # -- stages -----------------------------------------------------------------------------
    def table_unit(self, row: Row, concept) -> None:
        """Defaults, the validation sweep, and the tuned point's test scores of one row on one concept."""
        p, name = self.preset, concept.name
        rec = self.train(row, concept, "default")
        self.score_setting(row.name, concept, rec["out"], f"test/{row.name}/{name}/default", rec)
        base_val = self.score_validation(None, concept, None, f"val/{BASE_ROW}/{name}")
        points = []
        for lr in row.lrs:
            trec = self.train(row, concept, f"lr{lr:g}", lr=lr, steps=max(p.sweep_steps), checkpoint_every=min(p.sweep_steps))
            for step in p.sweep_steps:
                v = self.score_validation(row, concept, self.checkpoint_path(trec, step),
                                          f"val/{row.name}/{name}/lr{lr:g}-step{step}")
                points.append((v, (lr, step, trec)))
        (lr, step, trec), floor_met = choose(points, base_val["text_fidelity"], p.text_floor)
        self.records.put(f"choice/{row.name}/{name}", {"lr": lr, "steps": step, "floor_met": floor_met})
        self.score_setting(row.name, concept, self.checkpoint_path(trec, step), f"test/{row.name}/{name}/tuned",
                           {**trec, "steps": step, "lr": lr}, grid_prompts=4)
        self._prune(row, concept)

    def _prune(self, row: Row, concept) -> None:
        """Whole-pipeline checkpoints (DreamBooth) take tens of MB each: drop the sweep's once scored."""
        d = self.out / "runs" / row.name / concept.name
        for p in d.glob("lr*-step*"):
            if p.is_dir():
                shutil.rmtree(p)


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
