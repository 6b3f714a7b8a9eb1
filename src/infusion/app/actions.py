"""What the web page does, as plain functions of an ``Actions`` object (the Gradio layout in ``ui.py`` only wires
them): generate base | customised, compare library entries, the base model's attention on a concept, library
edits. They call what the CLI calls (``load_customized``, ``InfusionPipeline``, the world scorer); errors a
person can fix are ``ValueError`` with a message for the page.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from infusion.app.library import Entry, Library
from infusion.core.images import save_png
from infusion.core.model_profiles import model_profile
from infusion.customized import load_customized
from infusion.methods import customization_class

OUTPUTS = ".outputs"


def parse_seeds(text: str) -> list[int]:
    """``"0"``, ``"0, 1, 2"`` or ``"3-5"`` -> seeds (at most 8)."""
    seeds: list[int] = []
    for part in str(text or "0").replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                seeds += list(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"seeds: {text!r} is not a list of whole numbers (e.g. 0, 1, 2 or 0-3)") from None
    if not seeds or len(seeds) > 8:
        raise ValueError("seeds: give 1 to 8 seeds (e.g. 0, 1, 2)")
    return seeds


def _one_at_a_time(method):
    """Cached pipelines hold scheduler state: generations of one ``Actions`` run one at a time (``self.busy``)."""
    import functools

    @functools.wraps(method)
    def inner(self, *args, **kwargs):
        with self.busy:
            return method(self, *args, **kwargs)

    return inner


class Actions:
    def __init__(self, model: str, library: Library, model_config: str | None = None):
        import threading

        self.model, self.library, self.model_config = model, library, model_config
        self._fingerprint: str | None = None
        self.busy = threading.RLock()  # see _one_at_a_time

    # -- library --------------------------------------------------------------------------------
    def base_fingerprint(self) -> str:
        if self._fingerprint is None:
            from infusion.core.base_models import load_base_pipeline
            from infusion.core.customization_files import base_fingerprint
            from infusion.core.model_families import fingerprint_modules

            self._fingerprint = base_fingerprint(*fingerprint_modules(load_base_pipeline(self.model,
                                                                                         config=self.model_config)))
        return self._fingerprint

    def compatible(self, entry: Entry) -> bool:
        return not entry.base_fingerprint or entry.base_fingerprint == self.base_fingerprint()

    def table(self) -> list[list]:
        """Library rows: name, method, class, base model, fingerprint (⚠ other base), size, date, images."""
        rows = []
        for e in self.library.entries():
            fp = e.base_fingerprint + ("" if self.compatible(e) else "  ⚠ other base model")
            rows.append([e.name, e.method, e.class_phrase, e.base_model, fp, _size(e.bytes), e.date, len(e.images)])
        return rows

    def names(self, method: str | None = None) -> list[str]:
        """Entry names in alphabetical order (stable while the library grows)."""
        return sorted(e.name for e in self.library.entries() if method is None or e.method == method)

    def download(self, name: str) -> Path:
        """The entry as one file: itself, or a zip of its folder."""
        import shutil

        e = self.library.get(name)
        if e.path.is_file():
            return e.path
        dest = self.library.folder / OUTPUTS / e.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.make_archive(str(dest), "zip", root_dir=e.path))

    # -- generation -----------------------------------------------------------------------------
    CACHE = 2  # loaded generators kept (a real model takes seconds to load; the world a fraction of one)

    def _load(self, paths: list[Path]):
        """``load_customized`` for ``paths``, cached by (path, modification time) for the last ``CACHE`` sets."""

        key = tuple((str(p), p.stat().st_mtime_ns) for p in paths)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            while len(cache) >= self.CACHE:
                cache.pop(next(iter(cache)))
            cache[key] = load_customized(self.model, paths, model_config=self.model_config)
        else:
            cache[key] = cache.pop(key)  # most recently used last
        return cache[key]

    def _loaded(self, names: list[str]):
        entries = [self.library.get(n) for n in names]
        if not entries:
            raise ValueError("pick at least one concept from the library")
        methods = {e.method for e in entries}
        if len(methods) > 1:
            raise ValueError(f"one method at a time here (picked: {', '.join(sorted(methods))}); use Compare for that")
        warnings = [f"⚠ <{e.name}> was trained on another base model ({e.base_model})" for e in entries
                    if not self.compatible(e)]
        return self._load([e.path for e in entries]), entries, warnings

    @_one_at_a_time
    def generate(self, prompt: str, names: list[str], negative: str = "", seeds: str = "0", steps: int = 25,
                 guidance: float = 8.0):
        """-> (base images, customised images, PNG paths, notes). Each PNG holds its parameters (``save_png``)."""
        if not (prompt or "").strip():
            raise ValueError("write a prompt, e.g. a photo of <mycat> on the beach")
        steps, guidance = _check_steps(steps), float(guidance)
        model, entries, notes = self._loaded(list(names or []))
        seed_list = parse_seeds(seeds)
        base, custom, files = [], [], []
        out_dir = self.library.folder / OUTPUTS / time.strftime("%Y%m%d-%H%M%S")
        for seed in seed_list:
            out = model([prompt], negative_prompt=negative or None, generator=torch.Generator().manual_seed(seed),
                        num_inference_steps=steps, guidance_scale=guidance, return_base=True)
            params = {"prompt": prompt, "negative_prompt": negative or "", "seed": seed, "steps": steps,
                      "guidance": guidance, "model": self.model,
                      "concepts": [str(e.path.name) for e in entries], "method": entries[0].method}
            for kind, im, acc in (("base", out.base_images[0], base), ("custom", out.images[0], custom)):
                path = save_png(im, out_dir / f"seed{seed}-{kind}.png", {**params, "stream": kind})
                acc.append(im)
                files.append(path)
        return base, custom, files, "\n".join(notes)

    @_one_at_a_time
    def compare(self, prompt: str, names: list[str], seed: int = 0, steps: int = 25, guidance: float = 8.0,
                scores: bool = False):
        """One prompt (``<concept>`` stands for each entry) and seed across entries of any methods, base first.
        -> [(image, caption)]; with ``scores`` (world model) each caption adds text and concept fidelity."""
        if "<concept>" not in (prompt or ""):
            raise ValueError("write the prompt with <concept> where each entry's concept goes, "
                             "e.g. a photo of a <concept> on the beach")
        if not names:
            raise ValueError("pick the library entries to compare")
        steps = _check_steps(steps)
        g = lambda: torch.Generator().manual_seed(int(seed))  # noqa: E731
        kw = dict(num_inference_steps=steps, guidance_scale=float(guidance))
        cells = []
        for i, name in enumerate(names):
            e = self.library.get(name)
            model = self._load([e.path])
            text = prompt.replace("<concept>", f"<{e.name}>")
            out = model([text], generator=g(), return_base=(i == 0), **kw)
            if i == 0:
                cells.append((out.base_images[0], "base", prompt.replace("<concept>", e.class_phrase), e))
            cells.append((out.images[0], f"{e.name} ({e.method})", text.replace(f"<{e.name}>", e.class_phrase), e))
        if scores:
            cells = self._scored(cells)
        return [(im, cap) for im, cap, *_ in cells]

    def _scored(self, cells):
        scorer, out = model_profile(self.model).scorer(), []
        if scorer is None:
            raise ValueError("probe scores need the built-in world model (--model world)")
        for im, cap, text, e in cells:
            refs = [PIL.Image.open(p).convert("RGB") for p in e.images]
            s = scorer.score([im], [text], refs, e.class_phrase)
            cf = s["concept_fidelity"][0]
            extra = f" | text {s['text_fidelity'][0]:.2f}" + ("" if np.isnan(cf) else f", concept {cf:.2f}")
            out.append((im, cap + extra, text, e))
        return out

    @_one_at_a_time
    def attention(self, name: str, prompt: str, seed: int = 0, steps: int = 25, guidance: float = 8.0):
        """The base model's cross-attention on an Infusion concept's tokens (where its residual lands): per
        resolution, averaged over heads, steps and layers, overlaid on the customised image. -> [(image, caption)]."""
        e = self.library.get(name)
        if not customization_class(e.method).attention_maps:
            raise ValueError(f"<{e.name}> is a {e.method} entry: the attention view shows Infusion concepts")
        if f"<{e.name}>" not in (prompt or ""):
            raise ValueError(f"the prompt must name the concept as <{e.name}>")
        model, _, _ = self._loaded([e.name])
        out = model.pipe(prompt, generator=torch.Generator().manual_seed(int(seed)), num_inference_steps=_check_steps(steps),
                         guidance_scale=float(guidance), return_attention=True)
        image = out.images[0]
        cells = [(image, "customised")]
        for (h, w), maps in sorted(out.attention[e.name].items(), key=lambda kv: -kv[0][0]):
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

    def entry_details(self, name: str) -> tuple[str, list[Path]]:
        e = self.library.get(name)
        warn = "" if self.compatible(e) else "\n\n⚠ trained on another base model: it may not load, or look different"
        meta = {"method": e.method, "class phrase": e.class_phrase, "base model": e.base_model,
                "fingerprint": e.base_fingerprint, "family": e.family or "sd", "size": _size(e.bytes), "date": e.date}
        return "\n".join(f"- **{k}**: {v}" for k, v in meta.items()) + warn, e.images


def overlay(image: PIL.Image.Image, heat: np.ndarray) -> PIL.Image.Image:
    """A heat map (h, w) over ``image``: matplotlib's colormap, nearest upsampling, half transparent."""
    import matplotlib

    h = (heat - heat.min()) / (np.ptp(heat) + 1e-12)
    rgb = (matplotlib.colormaps["inferno"](h)[..., :3] * 255).astype(np.uint8)
    hm = PIL.Image.fromarray(rgb).resize(image.size, PIL.Image.Resampling.NEAREST)
    return PIL.Image.blend(image.convert("RGB"), hm, 0.55)


def _check_steps(steps) -> int:
    steps = int(steps)
    if not 1 <= steps <= 200:
        raise ValueError("denoising steps must be between 1 and 200")
    return steps


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 2**20:.1f} MB"

