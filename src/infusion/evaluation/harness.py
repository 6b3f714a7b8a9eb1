"""The evaluation harness: customisations x prompts x seeds -> images, per-image scores, LFD, W2.

Work list (DreamBench style): for every customisation file (and, with ``checkpoints``, every
``<stem>-step<N>`` beside it), every evaluation prompt of its concept and ``images_per_prompt``
seeds, one image; plus the base model's image for the same prompt with the class phrase and the
same seed (the reference of W2, Def. 3.2). Common seeds across methods make their images
comparable pair by pair.

Resumable: each finished image is recorded (``records/rank<k>.jsonl``) after it is written, and a
second run skips recorded images. Under ``accelerate launch`` the pending work is split across
processes with ``PartialState().split_between_processes``; the main process writes the reports.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from infusion.core.base_models import load_base_pipeline
from infusion.core.customization_files import output_parts, read_metadata, storage_bytes
from infusion.core.model_profiles import model_profile
from infusion.core.placeholders import substitute
from infusion.customized import load_customized
from infusion.evaluation.prompts import prompts_for
from infusion.evaluation.store import RecordStore
from infusion.methods import customization_class
from infusion.metrics.eps import UNetEps
from infusion.metrics.fisher import latent_fisher_divergence
from infusion.metrics.scorers import scoring_texts
from infusion.metrics.wasserstein import DEFAULT_POOL, pool_latents
from infusion.training.data import load_rgb

log = logging.getLogger(__name__)
BASE = "base"
STEP_FILE = re.compile(r"^(?P<stem>.+)-step(?P<step>\d+)$")


@dataclass
class EvalConfig:
    """One evaluation run (``infusion evaluate``)."""

    model: str = field(metadata={"help": "base model: diffusers folder, hub id, 'world' or 'tiny'"})
    files: list[str] = field(metadata={"help": "customisation files/folders written by `infusion train`"})
    out: str = field(metadata={"help": "output folder"})
    prompts: str = field(default="auto", metadata={"help": "auto (world on the world model, else dreambench) | dreambench | dreambench-object | dreambench-live | world | FILE"})
    images_per_prompt: int = field(default=4, metadata={"help": "seeds per prompt (the paper: 5)"})
    max_prompts: int = field(default=0, metadata={"help": "use only the first N prompts (0: all)"})
    seed: int = field(default=0, metadata={"help": "image k of every prompt uses seed + k"})
    steps: int = field(default=50, metadata={"help": "DDIM steps (the paper: 50)"})
    guidance: float = field(default=8.0, metadata={"help": "CFG scale (the paper: 8)"})
    batch_size: int = field(default=4, metadata={"help": "images per pipeline call"})
    checkpoints: bool = field(default=False, metadata={"help": "also evaluate <stem>-step<N> files beside each file (curves)"})
    references: dict = field(default_factory=dict, metadata={"help": "concept name -> folder of reference images"})
    lfd_data: str | None = field(default=None, metadata={"help": "folder of images + metadata.jsonl (file_name, text) of non-customised concepts"})
    lfd_samples: int = field(default=64, metadata={"help": "real latents used for the latent Fisher divergence"})
    lfd_repeats: int = field(default=1, metadata={"help": "(t, noise) draws per latent"})
    w2_pool: int = field(default=DEFAULT_POOL, metadata={"help": "latents are average-pooled to 4 x p x p for W2"})

    def __post_init__(self):
        if not self.files:
            raise ValueError("nothing to evaluate: give at least one customisation file")
        for name, v in (("images_per_prompt", self.images_per_prompt), ("steps", self.steps), ("batch_size", self.batch_size)):
            if v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.max_prompts < 0 or self.lfd_samples < 0 or self.lfd_repeats < 1:
            raise ValueError("--max-prompts and --lfd-samples must be >= 0, --lfd-repeats >= 1")


@dataclass(frozen=True)
class Entry:
    """One model to evaluate: a customisation file at a training step (``path`` None: base)."""

    label: str
    method: str
    path: str | None
    step: int | None
    name: str = ""
    class_phrase: str = ""
    storage_bytes: int = 0


def _training_steps(meta: dict) -> int | None:
    try:
        return int(json.loads(meta.get("training") or "{}").get("steps"))
    except (TypeError, ValueError):
        return None


def discover_entries(cfg: EvalConfig) -> list[Entry]:
    """The files (and checkpoints) to evaluate, labelled by method (plus the file stem when a
    method appears with several files of the same concept)."""

    entries = []
    for f in cfg.files:
        path = Path(f)
        meta = read_metadata(path)
        method, name, phrase = meta.get("method", "?"), meta.get("name", ""), meta.get("class_phrase", "")
        if not name or not phrase:
            raise ValueError(f"{path}: metadata lacks the concept's name/class_phrase")
        stem, ext = output_parts(path)
        paths = [(path, _training_steps(meta))]
        if cfg.checkpoints:
            for sib in sorted(path.parent.iterdir()):
                sib_stem, sib_ext = output_parts(sib)
                m = STEP_FILE.match(sib_stem)
                if m and m["stem"] == stem and sib != path and sib_ext == ext:
                    paths.append((sib, int(m["step"])))
        for p, step in paths:
            entries.append(Entry(method, method, str(p), step, name, phrase, storage_bytes(p)))
    # Two files of one method and one concept (e.g. two runs): tell them apart by stem.
    seen: dict[tuple, set] = {}
    for e in entries:
        seen.setdefault((e.method, e.name, e.step), set()).add(Path(e.path).parent / STEP_FILE.sub(r"\g<stem>", output_parts(e.path)[0]))
    out = []
    for e in entries:
        if len(seen[(e.method, e.name, e.step)]) > 1:
            stem = STEP_FILE.sub(r"\g<stem>", output_parts(e.path)[0])
            e = Entry(f"{e.method}:{stem}", e.method, e.path, e.step, e.name, e.class_phrase, e.storage_bytes)
        out.append(e)
    return out


@dataclass(frozen=True)
class Job:
    """One image: ``entry`` (None for the base model) on ``prompt`` with ``seed``."""

    key: str
    entry: Entry | None
    prompt: str  # customised prompt with <name>, or the base model's plain text
    prompt_index: int
    seed: int
    concept: str
    text: str  # the prompt with the class phrase in place of <name>


def step_tag(step: int | None) -> str:
    return "final" if step is None else f"step{step}"


def build_jobs(cfg: EvalConfig, entries: list[Entry]) -> list[Job]:
    jobs, base_keys = [], set()
    prompt_set = cfg.prompts if cfg.prompts != "auto" else model_profile(cfg.model).prompt_set
    for e in entries:
        prompts = prompts_for(e.name, e.class_phrase, prompt_set)
        if cfg.max_prompts:
            prompts = prompts[: cfg.max_prompts]
        for i, p in enumerate(prompts):
            text = substitute(p, {e.name: e.class_phrase})[0]
            for k in range(cfg.images_per_prompt):
                seed = cfg.seed + k
                jobs.append(Job(f"{e.label}|{e.path}|{e.name}|{i:03d}|{seed}", e, p, i, seed, e.name, text))
                bkey = f"{BASE}|{text}|{seed}"
                if bkey not in base_keys:
                    base_keys.add(bkey)
                    jobs.append(Job(bkey, None, text, i, seed, "", text))
    return jobs


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:80] or "x"


def image_path(job: Job) -> Path:
    """Relative path of a job's PNG."""
    if job.entry is None:
        return Path("images") / BASE / f"{_safe(job.text)}_s{job.seed}.png"
    e = job.entry
    return Path("images") / _safe(e.label) / _safe(e.name) / step_tag(e.step) / f"p{job.prompt_index:03d}_s{job.seed}.png"


# ----------------------------------------------------------------------------- models


class BaseGenerator:
    """The base model as a ``CustomizedModel``-like generator (no customisation)."""

    method = BASE
    storage_bytes = 0

    def __init__(self, pipe):
        self.pipe = pipe
        self._eps = UNetEps.from_pipeline(pipe)

    def __call__(self, prompts, generator=None, num_inference_steps=50, guidance_scale=8.0, output_type="latent"):
        out = self.pipe(list(prompts), generator=generator, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, output_type=output_type)
        return out

    def eps(self, z_t, t, prompts):
        return self._eps(z_t, t, prompts)


def load_generator(model: str, path: str | None, base_pipe=None):
    """A generator for one customisation file (``path`` None: the base model).

    Dispatches on the file's ``method`` metadata through ``infusion.customized.load_customized``
    (every method that registers a generation loader plugs in there). The returned object has
    ``__call__(prompts, generator=, num_inference_steps=, guidance_scale=, output_type=)`` with
    ``.images``, ``.eps(z_t, t, prompts)``, ``.pipe`` and ``.storage_bytes``.
    """
    if path is None:
        from infusion.core.base_models import load_base_pipeline

        pipe = base_pipe if base_pipe is not None else load_base_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        return BaseGenerator(pipe)

    # A method whose loader changes no base weight (Infusion) shares an already loaded base pipeline; the
    # others attach to their pipeline in place, so they get a fresh one.
    shared = base_pipe is not None and customization_class(read_metadata(path).get("method"), path).keeps_base_weights
    gen = load_customized(base_pipe if shared else model, [path])
    gen.pipe.set_progress_bar_config(disable=True)
    return gen


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> list:
    """latents [B, 4, h, w] -> PIL images with the pipeline's VAE (as the pipeline would)."""
    vae = pipe.vae
    img = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(img, output_type="pil", do_denormalize=[True] * img.shape[0])


# ----------------------------------------------------------------------------- references & LFD data


def load_images(folder: str | Path) -> list:

    folder = Path(folder)
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts) if folder.is_dir() else []
    if not files:
        raise ValueError(f"no images in reference folder {folder}")
    return [load_rgb(p) for p in files]


def references_for(cfg: EvalConfig, entry: Entry) -> list:
    """Reference images of a concept: ``cfg.references[name]`` or the training folder in its metadata."""
    folder = cfg.references.get(entry.name)
    if folder is None and entry.path is not None:
        from infusion.core.customization_files import read_metadata

        folder = json.loads(read_metadata(entry.path).get("training") or "{}").get("images")
    if folder is not None and Path(folder).is_dir():
        return load_images(folder)
    try:  # a built-in world concept: its training images
        from infusion.world.concepts import concept_images, get_concept

        get_concept(entry.name)
        return concept_images(entry.name)
    except (ImportError, ValueError):
        return []


@torch.no_grad()
def lfd_dataset(cfg: EvalConfig, pipe) -> tuple[torch.Tensor, list[str]] | None:
    """Real latents [N, 4, h, w] (scaled) and captions of non-customised concepts.

    From ``cfg.lfd_data`` (images + ``metadata.jsonl`` with ``file_name``/``text``, the Hugging Face
    imagefolder layout), else the model profile's own examples (the world's scene generator); else None.
    """
    n = cfg.lfd_samples
    if n == 0:
        return None
    images, captions = [], []
    if cfg.lfd_data:
        folder = Path(cfg.lfd_data)
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            raise ValueError(f"--lfd-data {folder}: expected metadata.jsonl with one {{\"file_name\", \"text\"}} per line")
        from infusion.training.data import load_rgb

        for line in meta.read_text().splitlines()[:n]:
            if line.strip():
                rec = json.loads(line)
                images.append(load_rgb(folder / rec["file_name"]))
                captions.append(rec["text"])
    else:
        own = model_profile(cfg.model).lfd_examples(n)
        if own is None:
            return None
        images, captions = own
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    x = pipe.image_processor.preprocess(images, height=size, width=size).to(pipe.vae.device, pipe.vae.dtype)
    z = torch.cat([pipe.vae.encode(x[i : i + 8]).latent_dist.mean for i in range(0, len(x), 8)])
    return (z.float() * pipe.vae.config.scaling_factor).contiguous(), captions


# ----------------------------------------------------------------------------- the run


def process_state():
    """accelerate's ``PartialState``. Without a GPU it must be told ``cpu=True``, or processes
    started by ``accelerate launch`` / ``torchrun`` would not join one CPU (gloo) group and each
    would do all the work."""
    import os

    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _groups(jobs: list[Job]) -> dict[tuple, list[Job]]:
    """Jobs by model to load (label, path): each model is loaded once per process."""
    out: dict[tuple, list[Job]] = {}
    for j in jobs:
        out.setdefault((None, None) if j.entry is None else (j.entry.label, j.entry.path), []).append(j)
    return out


def _generate_group(cfg, gen, jobs: list[Job], scorers, refs, out: Path, store: RecordStore, bar) -> None:
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start : start + cfg.batch_size]
        gens = [torch.Generator().manual_seed(j.seed) for j in batch]
        latents = gen([j.prompt for j in batch], generator=gens, num_inference_steps=cfg.steps,
                      guidance_scale=cfg.guidance, output_type="latent").images  # (b, 4, h, w)
        images = decode(gen.pipe, latents)
        pooled = pool_latents(latents.float(), cfg.w2_pool)  # (b, 4*p*p) float64
        scores: dict[str, np.ndarray] = {}
        if batch[0].entry is not None:  # base images are W2's reference only: not scored
            e = batch[0].entry
            texts = scoring_texts([j.prompt for j in batch], {e.name: e.class_phrase})
            for s in scorers:
                scores.update(s.score(images, texts, refs, class_phrase=e.class_phrase))
        records = []
        for i, (j, im) in enumerate(zip(batch, images)):
            rel = image_path(j)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            im.save(out / rel)
            e = j.entry
            rec = {
                "key": j.key, "label": BASE if e is None else e.label, "method": BASE if e is None else e.method,
                "file": None if e is None else e.path, "step": None if e is None else e.step,
                "concept": j.concept, "class_phrase": "" if e is None else e.class_phrase,
                "prompt": j.prompt, "prompt_index": j.prompt_index, "text": j.text, "seed": j.seed,
                "image": str(rel), "storage_bytes": 0 if e is None else e.storage_bytes,
                "latent_pooled": [float(v) for v in pooled[i]],
            }
            rec.update({k: float(v[i]) for k, v in scores.items()})
            records.append(rec)
        store.append(records)
        bar.update(len(batch))


def run_evaluation(cfg: EvalConfig, scorers: list = (), progress: bool = True) -> dict:
    """Generate, score and measure everything ``cfg`` asks for; write the reports (main process).

    Returns the summary (also ``summary.json``).
    """

    state = process_state()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    entries = discover_entries(cfg)
    jobs = build_jobs(cfg, entries)
    store = RecordStore(out / "records", state.process_index)
    done = store.read()
    todo = [j for j in jobs if j.key not in done]
    state.wait_for_everyone()  # every process reads the same records before any appends: same split
    if state.is_main_process:
        log.info("evaluate: %d images planned, %d already done, %d to generate", len(jobs), len(jobs) - len(todo), len(todo))

    base_pipe = None

    def base():
        nonlocal base_pipe
        if base_pipe is None:
            base_pipe = load_base_pipeline(cfg.model).to(state.device)
        return base_pipe

    with state.split_between_processes(todo) as mine:
        bar = tqdm(total=len(mine), desc=f"images (process {state.process_index})", disable=not progress)
        for (label, path), group in _groups(mine).items():
            if path is None:
                gen = load_generator(cfg.model, None, base())
                refs = []
            else:
                gen = load_generator(cfg.model, path, base())
                refs = references_for(cfg, group[0].entry) if scorers else []
            gen.pipe.to(state.device)
            _generate_group(cfg, gen, group, scorers, refs, out, store, bar)
            del gen
        bar.close()

    # Latent Fisher divergence per model (Def. 3.1), against the base model, same (z, t, eps).
    state.wait_for_everyone()
    lfd_store = RecordStore(out / "lfd", state.process_index)
    lfd_done = lfd_store.read()
    state.wait_for_everyone()
    lfd_todo = [e for e in entries if f"{e.label}|{e.path}" not in lfd_done]
    if lfd_todo and cfg.lfd_samples:
        data = lfd_dataset(cfg, base())
        if data is None:
            if state.is_main_process:
                log.warning("no data for the latent Fisher divergence: pass --lfd-data (images + metadata.jsonl); LFD skipped")
        else:
            latents, captions = data
            base_eps = UNetEps.from_pipeline(base())
            with state.split_between_processes(lfd_todo) as mine:
                for e in tqdm(mine, desc="latent Fisher divergence", disable=not progress):
                    gen = load_generator(cfg.model, e.path, base())
                    gen.pipe.to(state.device)
                    r = latent_fisher_divergence(base_eps, gen.eps, latents.to(state.device), captions, base().scheduler,
                                                 repeats=cfg.lfd_repeats, seed=cfg.seed, progress=False)
                    lfd_store.append([{"key": f"{e.label}|{e.path}", "label": e.label, "file": e.path, "step": e.step,
                                       "concept": e.name, "lfd": r.mean, "lfd_se": r.stderr, "n": r.n}])
                    del gen
    state.wait_for_everyone()
    summary = {}
    if state.is_main_process:
        from infusion.evaluation.report import write_reports

        summary = write_reports(out, entries, store.read(), lfd_store.read(), scorers, cfg)
    return summary
