"""What the web page does, as plain functions of an ``Actions`` object (the Gradio layout in ``ui.py`` only wires
them): generate base | customised, compare library entries, the base model's attention on a concept, library
edits. They call what the CLI calls (``load_customized``, ``InfusionPipeline``, the world scorer); errors a
person can fix are ``ValueError`` with a message for the page, raised before any model is loaded.

Generation runs on the GPU in float16 when there is one (``placement``); at most ``MAX_RESIDENT`` base models are
kept loaded (the least recently used is dropped first; a DreamBooth entry holds two: its own and the base for the
base images). Each generation writes its PNGs into a new folder of the page session
(``Library.output_folder``), removed when the session ends.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from infusion.app.library import Entry, Library, in_prompt
from infusion.core.base_models import LOAD_LOCK, load_base_pipeline
from infusion.core.customization_files import base_fingerprint, read_metadata
from infusion.core.images import save_png
from infusion.core.model_families import fingerprint_modules
from infusion.core.model_profiles import model_profile
from infusion.core.placeholders import find_placeholders
from infusion.customized import CustomizedModel, load_customized
from infusion.methods import customization_class

MAX_SEEDS = 8
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
MAX_RESIDENT = 2  # base models kept loaded at once (a real one is GBs)
THUMB = 256  # px: the Library tab's thumbnails


def parse_seeds(text: str) -> list[int]:
    """``"0"``, ``"0, 1, 2"`` or ``"3-5"`` -> seeds (1 to ``MAX_SEEDS``). The count is checked before any list is
    built, so ``"0-999999999"`` is refused at once."""
    text = str(text if text is not None else "").strip() or "0"
    example = "(e.g. 0, 1, 2 or 0-3)"
    if len(text) > 200:
        raise ValueError(f"seeds: give 1 to {MAX_SEEDS} seeds {example}")
    ranges = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d{1,19})(?:-(\d{1,19}))?", part)
        if not m:
            raise ValueError(f"seeds: {text!r} is not a list of whole numbers {example}")
        a, b = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if b > MAX_SEED:
            raise ValueError(f"seeds: {b} is too large (seeds go from 0 to {MAX_SEED:,})")
        if b < a:
            raise ValueError(f"seeds: {part} runs backwards; write the smaller seed first (e.g. {b}-{a})")
        ranges.append((a, b))
    count = sum(b - a + 1 for a, b in ranges)
    if not 1 <= count <= MAX_SEEDS:
        raise ValueError(f"seeds: {text!r} is {count:,} seed{'s' if count != 1 else ''}; give 1 to {MAX_SEEDS} {example}")
    return list(dict.fromkeys(s for a, b in ranges for s in range(a, b + 1)))  # a seed given twice: once


def placement() -> tuple[str, torch.dtype]:
    """Where the page generates: the GPU in float16 when there is one (SDXL's VAE, which overflows in float16, is
    upcast by diffusers itself: ``force_upcast``), else the CPU in float32."""
    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def load_generator(model: str, paths: list[Path], model_config: str | None = None, device: str | None = None,
                   dtype: torch.dtype | None = None) -> CustomizedModel:
    """``load_customized`` for ``paths`` on base ``model``, placed on ``device`` in ``dtype`` (default:
    ``placement()``): the base pipeline is loaded here, so base images (a DreamBooth entry's too) come from it."""
    if device is None:
        device, dtype = placement()
    dtype = dtype or torch.float32
    base = load_base_pipeline(model, config=model_config)
    generator = load_customized(base, paths)
    for pipe in {id(p): p for p in (base, generator.pipe)}.values():  # DreamBooth: its own pipeline too
        if pipe.dtype != dtype:
            pipe.to(dtype=dtype)
        if pipe.device.type != torch.device(device).type:
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
    return generator


class Actions:
    def __init__(self, model: str, library: Library, model_config: str | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None):
        self.model, self.library, self.model_config = model, library, model_config
        self.device, self.dtype = (device, dtype) if device is not None else placement()
        self._fingerprint: str | None = None
        self._cache: OrderedDict[tuple, tuple[CustomizedModel, int]] = OrderedDict()  # least recently used first
        self.busy = threading.RLock()  # generations one at a time (inputs are checked before waiting for it)
        self._scorer = None  # the model's own scorer (the world's probes), built once

    # -- library --------------------------------------------------------------------------------
    def base_fingerprint(self) -> str:
        if self._fingerprint is None:
            pipe = load_base_pipeline(self.model, config=self.model_config)
            self._fingerprint = base_fingerprint(*fingerprint_modules(pipe))
        return self._fingerprint

    def compatible(self, entry: Entry) -> bool:
        return not entry.base_fingerprint or entry.base_fingerprint == self.base_fingerprint()

    def table(self) -> list[list]:
        """Library rows: name, method, class, base model, fingerprint (⚠ other base), size, date, images."""
        rows = []
        for e in self.library.entries():
            fp = e.base_fingerprint + ("" if self.compatible(e) else "  ⚠ other base model")
            rows.append([e.name, e.method, e.class_phrase, shown_model(e.base_model), fp, _size(e.bytes), e.date,
                         len(e.images)])
        return rows

    def names(self, method: str | None = None) -> list[str]:
        """Entry names in alphabetical order (stable while the library grows)."""
        return sorted(e.name for e in self.library.entries() if method is None or e.method == method)

    def download(self, name: str, session: str | None = None, folder: Path | None = None) -> Path:
        """The entry as one file: itself, or a zip of its folder in ``folder`` (default: the page session's
        ``downloads`` folder in the library), made once per entry version (stored, not compressed: a DreamBooth entry
        is 4 GB of weights that do not shrink). The page passes a folder inside Gradio's cache, which serves a file
        there as it is (from anywhere else it copies the file into the cache first: twice the disk)."""
        e = self.library.get(name)
        if e.path.is_file():
            return e.path
        if folder is None:
            folder = self.library.downloads_folder(session)
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{e.name}-{e.path.stat().st_mtime_ns}.zip"
        if not dest.is_file():
            for old in folder.glob(f"{e.name}-*.zip"):  # an older version's zip of this entry (not of "<name>-2")
                if re.fullmatch(re.escape(e.name) + r"-\d+\.zip", old.name):
                    old.unlink()
            tmp = dest.with_suffix(".tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
                for p in sorted(e.path.rglob("*")):
                    if p.is_file():
                        z.write(p, p.relative_to(e.path).as_posix())
            os.replace(tmp, dest)
        return dest

    # -- generation -----------------------------------------------------------------------------
    def resident(self) -> int:
        """Base models loaded now (by the generators kept for reuse)."""
        return sum(w for _, w in self._cache.values())

    def _load(self, paths: list[Path]) -> CustomizedModel:
        """A generator for ``paths``, reused while its files are unchanged (path, modification time); loading
        another first drops the least recently used ones until at most ``MAX_RESIDENT`` base models stay loaded."""
        key = tuple((str(p), p.stat().st_mtime_ns) for p in paths)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key][0]
        owns = customization_class(read_metadata(paths[0]).get("method", ""), paths[0]).owns_pipeline
        weight = 2 if owns else 1  # a whole fine-tuned model, plus the base one for its base images
        dropped = False
        while self._cache and self.resident() + weight > MAX_RESIDENT:
            self._cache.popitem(last=False)
            dropped = True
        if dropped:  # free the dropped models' memory before the next one loads
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        model = load_generator(self.model, paths, self.model_config, self.device, self.dtype)
        self._cache[key] = (model, weight)
        return model

    def _loaded(self, names: list[str]):
        entries = [self.library.get(n) for n in names]
        if not entries:
            raise ValueError("pick at least one concept from the library")
        methods = {e.method for e in entries}
        if len(methods) > 1:
            raise ValueError(f"one method at a time here (picked: {', '.join(sorted(methods))}); use Compare for that")
        held = {}
        for e in entries:  # two files that name their concept alike cannot answer to two names in one prompt
            other = held.setdefault(e.concept or e.name, e.name)
            if other != e.name:
                raise ValueError(f"<{other}> and <{e.name}> are both the concept <{e.concept or e.name}> in their "
                                 "files: rename one in the Library tab, or pick one")
        warnings = [f"⚠ <{e.name}> was trained on another base model ({shown_model(e.base_model)})" for e in entries
                    if not self.compatible(e)]
        return self._load([e.path for e in entries]), entries, warnings

    def generate(self, prompt: str, names: list[str], negative: str = "", seeds: str = "0", steps: int = 25,
                 guidance: float = 8.0, session: str | None = None):
        """-> (base images, customised images, PNG paths, notes). Each PNG holds its parameters (``save_png``); the
        PNGs go to a new folder of ``session`` (the page session; removed when it ends)."""
        if not (prompt or "").strip():
            raise ValueError("write a prompt, e.g. a photo of <mycat> on the beach")
        steps, guidance = _check_steps(steps), _check_guidance(guidance)
        seed_list = parse_seeds(seeds)  # every input checked before a model loads
        names = list(names or [])
        if not names:
            raise ValueError("pick at least one concept from the library")
        _check_placeholders(prompt, negative, names)
        with self.busy:  # cached pipelines hold scheduler state: one generation at a time
            model, entries, notes = self._loaded(names)
            text, negative_text = in_prompt(entries, prompt), in_prompt(entries, negative or "")  # the files' names
            base, custom, files = [], [], []
            out_dir = self.library.output_folder(session)
            for seed in seed_list:
                out = model([text], negative_prompt=negative_text or None, generator=torch.Generator().manual_seed(seed),
                            num_inference_steps=steps, guidance_scale=guidance, return_base=True)
                params = {"prompt": prompt, "negative_prompt": negative or "", "seed": seed, "steps": steps,
                          "guidance": guidance, "model": self.model,
                          "concepts": [str(e.path.name) for e in entries], "method": entries[0].method}
                for kind, im, acc in (("base", out.base_images[0], base), ("custom", out.images[0], custom)):
                    path = save_png(im, out_dir / f"seed{seed}-{kind}.png", {**params, "stream": kind})
                    acc.append(im)
                    files.append(path)
            return base, custom, files, "\n".join(notes)

    def compare(self, prompt: str, names: list[str], seed: int = 0, steps: int = 25, guidance: float = 8.0,
                scores: bool = False):
        """One prompt (``<concept>`` stands for each entry) and seed across entries of any methods, base first.
        -> [(image, caption)]; with ``scores`` (world model) each caption adds text and concept fidelity."""
        if "<concept>" not in (prompt or ""):
            raise ValueError("write the prompt with <concept> where each entry's concept goes, "
                             "e.g. a photo of a <concept> on the beach")
        if not names:
            raise ValueError("pick the library entries to compare")
        steps, seed = _check_steps(steps), _check_seed(seed)
        g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
        kw = dict(num_inference_steps=steps, guidance_scale=_check_guidance(guidance))
        with self.busy:  # cached pipelines hold scheduler state: one generation at a time
            cells = []
            for i, name in enumerate(names):
                e = self.library.get(name)
                model = self._load([e.path])
                text = prompt.replace("<concept>", f"<{e.name}>")
                out = model([e.in_prompt(text)], generator=g(), return_base=(i == 0), **kw)
                if i == 0:
                    cells.append((out.base_images[0], "base", prompt.replace("<concept>", e.class_phrase), e))
                cells.append((out.images[0], f"{e.name} ({e.method})", text.replace(f"<{e.name}>", e.class_phrase), e))
            if scores:
                cells = self._scored(cells)
            return [(im, cap) for im, cap, *_ in cells]

    def _scored(self, cells):
        if self._scorer is None:
            with LOAD_LOCK:  # it builds modules: not while another thread loads a model (base_models.LOAD_LOCK)
                self._scorer = model_profile(self.model).scorer()
        scorer, out = self._scorer, []
        if scorer is None:
            raise ValueError("probe scores need the built-in world model (--model world)")
        for im, cap, text, e in cells:
            refs = [PIL.Image.open(p).convert("RGB") for p in e.images]
            s = scorer.score([im], [text], refs, e.class_phrase)
            cf = s["concept_fidelity"][0]
            extra = f" | text {s['text_fidelity'][0]:.2f}" + ("" if np.isnan(cf) else f", concept {cf:.2f}")
            out.append((im, cap + extra, text, e))
        return out

    def attention(self, name: str, prompt: str, seed: int = 0, steps: int = 25, guidance: float = 8.0):
        """The base model's cross-attention on an Infusion concept's tokens (where its residual lands): per
        resolution, averaged over heads, steps and layers, overlaid on the customised image. -> [(image, caption)]."""
        e = self.library.get(name)
        if not customization_class(e.method).attention_maps:
            raise ValueError(f"<{e.name}> is a {e.method} entry: the attention view shows Infusion concepts")
        if f"<{e.name}>" not in (prompt or ""):
            raise ValueError(f"the prompt must name the concept as <{e.name}>")
        steps, seed, guidance = _check_steps(steps), _check_seed(seed), _check_guidance(guidance)
        with self.busy:  # cached pipelines hold scheduler state: one generation at a time
            model, _, _ = self._loaded([e.name])
            out = model.pipe(e.in_prompt(prompt), generator=torch.Generator().manual_seed(seed),
                             num_inference_steps=steps, guidance_scale=guidance, return_attention=True)
        image = out.images[0]
        cells = [(image, "customised")]
        for (h, w), maps in sorted(out.attention[e.concept or e.name].items(), key=lambda kv: -kv[0][0]):
            cells.append((overlay(image, maps[0].numpy()), f"attention {h}x{w}"))
        return cells

    # -- library edits ----------------------------------------------------------------------------
    def rename(self, name: str, new: str) -> str:
        self.library.rename(name, new)
        return f"renamed <{name}> to <{new.strip()}>"

    def delete(self, name: str, confirmed: bool) -> str:
        if not confirmed:
            raise ValueError(f"tick 'yes, delete' to delete <{name}> (this cannot be undone)")
        self.library.delete(name)
        return f"deleted <{name}>"

    def entry_details(self, name: str) -> tuple[str, list[PIL.Image.Image]]:
        """-> (the entry's metadata as Markdown, thumbnails of its training images). Paths are shown relative to the
        library, and the thumbnails are images, not files (its images may lie outside the library)."""
        e = self.library.get(name)
        warn = "" if self.compatible(e) else "\n\n⚠ trained on another base model: it may not load, or look different"
        meta = {"file": self.library.relative(e.path), "method": e.method, "class phrase": e.class_phrase,
                "base model": shown_model(e.base_model), "fingerprint": e.base_fingerprint, "family": e.family or "sd",
                "size": _size(e.bytes), "date": e.date}
        return "\n".join(f"- **{k}**: {v}" for k, v in meta.items()) + warn, [_thumbnail(p) for p in e.images]


def shown_model(base_model: str) -> str:
    """A base model as the page shows it: a local path by its last part (the page shows no file system paths)."""
    if base_model and (Path(base_model).is_absolute() or base_model.startswith(("~", "."))):
        return Path(base_model).name
    return base_model


def _thumbnail(path: Path) -> PIL.Image.Image:
    with PIL.Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB, THUMB))
        return im


def overlay(image: PIL.Image.Image, heat: np.ndarray) -> PIL.Image.Image:
    """A heat map (h, w) over ``image``: matplotlib's colormap, nearest upsampling, half transparent."""
    import matplotlib  # deferred on purpose: only the Attention tab draws with it

    h = (heat - heat.min()) / (np.ptp(heat) + 1e-12)
    rgb = (matplotlib.colormaps["inferno"](h)[..., :3] * 255).astype(np.uint8)
    hm = PIL.Image.fromarray(rgb).resize(image.size, PIL.Image.Resampling.NEAREST)
    return PIL.Image.blend(image.convert("RGB"), hm, 0.55)


def _whole(value, message: str) -> int:
    """A whole number from a form field (int, a float such as 25.0, or text), else ``ValueError(message)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(message) from None


def _check_seed(seed) -> int:
    message = f"the seed must be a whole number from 0 to {MAX_SEED:,}"
    seed = _whole(0 if seed is None else seed, message)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(message)
    return seed


def _check_guidance(guidance) -> float:
    try:
        value = float(guidance)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value <= 50:
        raise ValueError("guidance must be a number from 0 to 50 (8 is usual)")
    return value


def _check_placeholders(prompt: str, negative: str, names: list[str]) -> None:
    """``ValueError`` unless the prompt writes a picked concept as ``<name>`` and names no other (without one the
    customised image is the base image: a silent no-op)."""
    written = find_placeholders(prompt) + find_placeholders(negative or "")
    unknown = sorted(set(written) - set(names))
    if unknown:
        raise ValueError(f"the prompt names {', '.join(f'<{n}>' for n in unknown)}, which is not picked; "
                         f"picked: {', '.join(f'<{n}>' for n in names)}")
    if not set(find_placeholders(prompt)) & set(names):
        raise ValueError(f"write the concept in the prompt as <{names[0]}>, e.g. a photo of <{names[0]}> on the beach; "
                         "without it the customised image is the base model's")


def _check_steps(steps) -> int:
    message = "denoising steps must be a whole number between 1 and 200"
    steps = _whole(steps, message)
    if not 1 <= steps <= 200:
        raise ValueError(message)
    return steps


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 2**20:.1f} MB"

