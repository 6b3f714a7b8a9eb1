"""The page's blind A/B study (``evaluation.study`` holds the plan, answers and Table 2): create a study from
library entries, generate its images ahead of time in a background thread, and show a question without saying
which entry made which image.

Studies live in ``<library>/studies/<name>/``, with a copy of the concept's photos (``references/``). Images are generated once per (entry, prompt, seed), every entry
from the same noise (the same seed), written atomically, and a study resumes where it stopped (only missing images
are generated). A question is shown as HTML whose images are data URIs re-encoded without any PNG text, so no
entry name, method, file path or URL is in the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch

from infusion.app.actions import Actions, _check_guidance, _check_steps, parse_seeds
from infusion.app.library import STUDIES, Entry, check_name
from infusion.core.customization_files import FOLDER_META
from infusion.core.model_profiles import model_profile
from infusion.evaluation.prompts import prompts_for
from infusion.evaluation.study import Study
from infusion.world.concepts import CONCEPTS, validation_prompts

logger = logging.getLogger(__name__)

SHOWN = 256  # px: images are enlarged (nearest) to at least this for the page
MAX_PROMPTS = 50
REFERENCES = "references"  # <study>/references/: copies of the concept's photos, made with the study
MAX_REFERENCES = 5


def default_prompts(model: str, entries: list[Entry]) -> list[str]:
    """Prompts with ``<concept>``: the world's validation prompts on the built-in world (of the world concept an
    entry is named after or shares its class with), DreamBench's for the class on any other model."""
    if not entries:
        return []
    phrase = entries[0].class_phrase
    if model_profile(model).is_builtin_world:
        named = [c for e in entries for c in CONCEPTS if e.name == c or e.name.startswith(c + "-")]
        same_class = [c for c, v in CONCEPTS.items() if v.class_phrase == phrase]
        world = (named or same_class or list(CONCEPTS))[0]
        return [p.replace(f"<{world}>", "<concept>") for p in validation_prompts(world)]
    return prompts_for("concept", phrase, "dreambench")


def parse_prompts(text: str) -> list[str]:
    prompts = list(dict.fromkeys(ln.strip() for ln in (text or "").splitlines() if ln.strip()))
    if not prompts:
        raise ValueError("write the prompts, one per line, with <concept> where the concept goes")
    bad = [p for p in prompts if "<concept>" not in p]
    if bad:
        raise ValueError(f"every prompt needs <concept> where the concept goes: {bad[0]!r}")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"{len(prompts)} prompts: at most {MAX_PROMPTS}")
    return prompts


def arm_labels(entries: list[Entry]) -> list[str]:
    """Each entry's name in the table: its method, with the entry's name where two share a method."""
    methods = [e.method for e in entries]
    return [e.method if methods.count(e.method) == 1 else f"{e.method} ({e.name})" for e in entries]


@dataclass
class StudyJob:
    """Image generation of one study, read by the page's timer."""

    study: str
    total: int
    done: int = 0
    status: str = "generating"  # generating | ready | stopped | failed
    message: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.status != "generating"


class Studies:
    """The library's studies and their image generation (one study generates at a time)."""

    def __init__(self, actions: Actions):
        self.actions, self.library = actions, actions.library
        self.folder = self.library.folder / STUDIES
        self.job: StudyJob | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.parent.name for p in self.folder.glob("*/study.json"))

    def get(self, name: str) -> Study:
        return Study.load(self.folder / check_name(name))

    def create(self, name: str, entry_names: list[str], prompts: str, seeds: str = "0", questions: int = 12,
               steps: int = 25, guidance: float = 8.0, seed: int = 0, blocking: bool = False) -> Study:
        """Check everything, write the plan, start generating its images."""
        name = check_name(name)
        entries = [self.library.get(n) for n in dict.fromkeys(entry_names or [])]
        if len(entries) < 2:
            raise ValueError("pick at least two library entries of the same concept")
        phrases = sorted({e.class_phrase for e in entries})
        if len(phrases) > 1:
            raise ValueError(f"pick entries of one concept: these are of {', '.join(phrases)}")
        steps, guidance = _check_steps(steps), _check_guidance(guidance)
        arms = [{"label": lab, "entry": e.name, "method": e.method, "version": entry_version(e)}
                for lab, e in zip(arm_labels(entries), entries)]
        settings = {"model": self.actions.model, "steps": steps, "guidance": guidance}
        with self._lock:
            self._refuse_busy(name)
            study = Study.create(self.folder / name, arms, phrases[0], parse_prompts(prompts), parse_seeds(seeds),
                                 int(questions or 0), settings, seed)
            refs = study.folder / REFERENCES  # a copy: renaming or deleting an entry later must not show its name
            refs.mkdir()
            for i, p in enumerate(entries[0].images[:MAX_REFERENCES]):
                shutil.copyfile(p, refs / f"{i:02d}{p.suffix.lower()}")
        self.generate(name, blocking=blocking)
        return study

    def reference_images(self, study: Study) -> list[Path]:
        """The concept's photos shown to participants: the study's copy (a study made before copies were kept: its
        first entry's, if the library still has it; else none, never an error naming the entry)."""
        refs = study.folder / REFERENCES
        if refs.is_dir():
            return sorted(p for p in refs.iterdir() if p.is_file())
        try:
            return self.library.get(study.arms[0]["entry"]).images[:MAX_REFERENCES]
        except ValueError:
            return []

    def generate(self, name: str, blocking: bool = False) -> StudyJob:
        """Generate the study's missing images in a thread (nothing to do: a finished job at once)."""
        study = self.get(name)
        with self._lock:
            if self.job is not None and not self.job.finished and self.job.study == study.folder.name:
                return self.job
            self._refuse_busy(study.folder.name)
            missing = study.missing_images()
            total = len(study.needed_images())
            self.job = job = StudyJob(study.folder.name, total, total - len(missing))
            self._thread = threading.Thread(target=self._run, args=(job, study, missing), daemon=True)
            self._thread.start()
        if blocking:
            self._thread.join()
        return job

    def stop(self) -> str:
        """Stop the running image generation after the image being made (the study resumes where it stopped)."""
        job = self.job
        if job is None or job.finished:
            return "no study is generating its images"
        job.cancel.set()
        return f"stopping study {job.study} after the image being made ({job.done}/{job.total} done)"

    def _refuse_busy(self, name: str) -> None:
        job = self.job
        if job is not None and not job.finished and job.study != name:
            raise ValueError(f"study {job.study!r} is generating its images ({job.done}/{job.total}): wait for it")

    def progress(self, name: str, participant: bool = False) -> str:
        """What the study's images are doing, in words; for a ``participant``, a failure's reason is left out (it
        may name an entry, which would tell which method made which image)."""
        study = self.get(name)
        job = self.job if self.job is not None and self.job.study == study.folder.name else None
        if job is not None and not job.finished:
            return f"generating the images: {job.done}/{job.total}"
        if job is not None and job.status == "failed":
            return "its images cannot be made now: ask the study's owner" if participant else job.message
        missing, total = len(study.missing_images()), len(study.needed_images())
        if missing:
            return f"{total - missing}/{total} images generated (answering starts the rest)"
        return f"ready: {len(study.questions)} questions, {total} images"

    def _run(self, job: StudyJob, study: Study, missing: list[tuple[int, int, int]]) -> None:
        s = study.data["settings"]
        entries: dict[int, object] = {}  # each arm's entry checked once a run (its version hashes the file)
        try:
            for arm, k, seed in missing:
                if job.cancel.is_set():
                    job.message = (f"stopped after {job.done}/{job.total} images (kept): the rest are generated "
                                   "when someone presses Start in Answer")
                    job.status = "stopped"
                    return
                if arm not in entries:
                    entries[arm] = self._entry(study, arm)
                entry = entries[arm]
                text = entry.in_prompt(study.data["prompts"][k].replace("<concept>", f"<{entry.name}>"))
                with self.actions.busy:  # cached pipelines hold scheduler state: one generation at a time
                    model = self.actions._load([entry.path])
                    image = model([text], generator=torch.Generator().manual_seed(seed),
                                  num_inference_steps=s["steps"], guidance_scale=s["guidance"]).images[0]
                path = study.image_path(arm, k, seed)
                tmp = path.with_suffix(".tmp")
                image.save(tmp, format="PNG")
                os.replace(tmp, path)  # never a half-written image: a stopped study resumes from whole ones
                job.done += 1
                logger.info("study %s: %d/%d images", job.study, job.done, job.total)
            job.status = "ready"
        except Exception as e:  # shown on the page, logged with its trace
            logger.exception("study %s: generation failed", job.study)
            job.message = self.library.scrub(f"⚠ generating the images failed after {job.done}/{job.total}: "
                                             f"{type(e).__name__}: {e}")
            job.status = "failed"

    def _entry(self, study: Study, arm: int):
        """The library entry an arm's remaining images come from: the one the study was made with, else an error
        for the study's owner (renamed, deleted, or another entry under its name since)."""
        a = study.arms[arm]
        gone = ValueError(f"the entry <{a['entry']}> of {a['label']} was renamed, deleted or trained again after the "
                          "study was made, so its remaining images cannot come from the model the others came from: "
                          "make a new study (the images made so far are kept)")
        try:
            entry = self.library.get(a["entry"])
        except ValueError:
            raise gone from None
        if a.get("version") not in (None, entry_version(entry)):  # studies made before versions were kept: no check
            raise gone
        return entry

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def entry_version(entry) -> str:
    """What tells one version of a library entry from another, whatever copied it (file times are not kept by every
    copy): a file's bytes (a concept file is kilobytes to a few megabytes), a folder's metadata file and the names and
    sizes of its files (a DreamBooth folder is gigabytes of weights; its metadata holds the settings that made them).
    A rename changes it (the metadata's name); renaming back restores it; the same training again gives the same."""
    digest = hashlib.sha256()
    if entry.path.is_dir():
        digest.update((entry.path / FOLDER_META).read_bytes())
        for p in sorted(entry.path.rglob("*")):
            if p.is_file():
                digest.update(f"{p.relative_to(entry.path).as_posix()}:{p.stat().st_size};".encode())
    else:
        with open(entry.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def question_html(study: Study, q: dict) -> str:
    """The question's two images side by side and the concept's reference images, all as data URIs (re-encoded:
    no PNG text), with nothing that says which entry made which image."""
    left = q["left"]
    right = q["pair"][1] if left == q["pair"][0] else q["pair"][0]
    cells = []
    for side, arm in (("left", left), ("right", right)):
        with PIL.Image.open(study.image_path(arm, q["prompt"], q["seed"])) as im:
            cells.append(f'<figure class="study-side"><img alt="{side} image" src="{data_uri(im)}">'
                         f'<figcaption>{side}</figcaption></figure>')
    return (f'<div class="study-prompt">{html.escape(study.shown_prompt(q))}</div>'
            f'<div class="study-pair">{"".join(cells)}</div>')


def reference_html(images: list[Path]) -> str:
    """The concept's training images, small, as data URIs."""
    imgs = []
    for p in images[:MAX_REFERENCES]:
        with PIL.Image.open(p) as im:
            imgs.append(f'<img alt="your concept" src="{data_uri(im, 96)}">')
    return f'<div class="study-refs">your concept: {"".join(imgs)}</div>' if imgs else ""


def data_uri(image: PIL.Image.Image, size: int = SHOWN) -> str:
    """``image`` as a PNG data URI, enlarged (nearest) to at least ``size`` px, without metadata."""
    image = image.convert("RGB")
    scale = max(1, size // max(image.size))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), PIL.Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
