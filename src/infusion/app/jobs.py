"""Training from the web page: one job at a time, in a background thread, through the CLI's own ``train``.

A job copies the images into the library (``.images/<name>/``), trains into a staging folder inside the library
with the settings the form shows (``--lr`` left to the method's default when the form holds that default, so the
file equals the CLI's bit for bit), reports every step (loss, ETA) and renders a sample from each ``-stepN``
checkpoint, keeping only the last checkpoint on disk (a DreamBooth one is a whole pipeline); only a finished output
is moved into the library. Cancel is answered after the step that runs (the trainer asks after every step); the
setup before step 1 (loading, DreamBooth's class images, Infusion's paired redraws) runs to its end, so the page bounds
it (``PAGE_LIMITS``).
While a job runs its name is held (``Library.reserve``): no entry can be renamed to it. When a
job ends, finished, cancelled or failed, its staging folder is removed; a cancelled or failed job also removes its
copy of the images, so the library is as it was (a failure's message says what went wrong; the log has the trace).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch

from infusion.app.actions import load_generator
from infusion.app.library import Library, check_name
from infusion.methods import get_method
from infusion.training import TrainConfig, train
from infusion.training.config import parse_method_args
from infusion.training.data import read_image
from infusion.training.trainer import Cancelled, step_path

logger = logging.getLogger(__name__)

MIN_IMAGES, MAX_IMAGES = 3, 10
MAX_BYTES = 20 * 1024 * 1024  # per file; the page's server refuses bigger uploads before they are written
MAX_PIXELS = 40_000_000
# setup work before step 1 (DreamBooth's class images, Infusion's paired redraws) cannot be cancelled: the page bounds it
PAGE_LIMITS = {"num_class_images": 200, "prior_steps": 200, "paired_views": 16}
KEEP_CHECKPOINTS = 1  # -stepN outputs kept on disk during a job (the sample is rendered from the newest); no resume
# state is written (save_state=False): a job never resumes, and its staging folder goes when it ends


def check_images(paths: list[str | Path]) -> list[Path]:
    """Uploaded files -> the image paths, or ``ValueError`` with a message for the page (never a trace). An image
    is what the trainer reads (``training.data.read_image``: an image suffix, readable, at least 32 px a side)."""
    paths = [Path(p) for p in paths or []]
    if not paths:
        raise ValueError(f"no images: drop {MIN_IMAGES}-{MAX_IMAGES} photos of your concept (or pick a built-in one)")
    if not MIN_IMAGES <= len(paths) <= MAX_IMAGES:
        raise ValueError(f"{len(paths)} images: use {MIN_IMAGES} to {MAX_IMAGES} photos of the concept")
    for p in paths:
        if not p.is_file():  # e.g. an upload the server's cache removed after a day
            raise ValueError(f"{p.name} is no longer on the server: upload the photos again")
        if p.stat().st_size > MAX_BYTES:
            raise ValueError(f"{p.name} is {p.stat().st_size / 2**20:.0f} MB: files up to {MAX_BYTES // 2**20} MB, please")
        try:
            with PIL.Image.open(p) as im:  # the header only: refuse huge images before decoding them
                w, h = im.size
        except Exception:
            w = h = 0  # not an image: read_image says why
        if w * h > MAX_PIXELS:
            raise ValueError(f"{p.name} is {w}x{h}: images up to {MAX_PIXELS // 1_000_000} megapixels, please")
        read_image(p)  # ValueError naming the file: what training would skip
    return paths


@dataclass
class Job:
    """A training job's state, read by the page's timer."""

    id: str
    name: str
    method: str
    steps: int
    status: str = "starting"  # starting | running | cancelling | done | cancelled | failed
    step: int = 0
    losses: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    message: str = ""
    sample_steps: list[int] = field(default_factory=list)  # the steps a sample was rendered at
    sample: PIL.Image.Image | None = None  # the newest sample (kept in memory: the staging folder goes away)
    result: Path | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def eta(self) -> float | None:
        if self.step == 0:
            return None
        return (time.time() - self.started) / self.step * (self.steps - self.step)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")


class Trainer:
    """Runs at most one ``Job``; ``start`` refuses a second one while the first runs."""

    def __init__(self, library: Library, model: str, model_config: str | None = None, device: str | None = None,
                 dtype: torch.dtype | None = None):
        self.library, self.model, self.model_config = library, model, model_config
        self.device, self.dtype = device, dtype  # where samples are rendered (None: actions.placement)
        self.job: Job | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, images: list[str | Path], name: str, class_phrase: str, method: str, steps: int, lr: float | None,
              sample_every: int = 0, seed: int = 0, batch_size: int = 4, blocking: bool = False,
              options: str = "") -> Job:
        """Validate and start; ``ValueError`` with a page message on bad input or while another job runs.
        ``options``: the method's settings as ``infusion train --method-arg`` takes them, space-separated
        (``"maps=own"``); a key the method does not read is refused, naming the ones it does."""

        with self._lock:
            if self.job is not None and not self.job.finished:
                j = self.job
                raise ValueError(f"a training job is running (<{j.name}>, {j.method}, step {j.step}/{j.steps}): "
                                 "wait for it or cancel it")
            name = check_name(name)
            if self.library.exists(name):
                raise ValueError(f"the library already has {name!r}: pick another name or delete that entry")
            if not (lr is None or lr > 0) or int(sample_every or 0) < 0:  # the page's words (TrainConfig has the CLI's)
                raise ValueError("the learning rate must be > 0 (empty: the method's default) and 'sample every' >= 0")
            if not (class_phrase or "").strip():
                raise ValueError("give the class phrase: what the concept is (cat, mug, backpack)")
            images = check_images(images)
            if not 1 <= int(steps) <= 100_000:
                raise ValueError("steps must be between 1 and 100,000")
            method_args = parse_method_args((options or "").split())
            cls = get_method(method)
            unknown = cls.unknown_method_args(method_args)
            if unknown:
                known = ", ".join(sorted(cls.method_args_help or {})) or "none"
                raise ValueError(f"{method} has no option {', '.join(unknown)}; it reads: {known}")
            for key, most in PAGE_LIMITS.items():
                value = method_args.get(key)
                if value is not None and not (isinstance(value, int) and 1 <= value <= most):
                    raise ValueError(f"{key} must be a whole number from 1 to {most} here (the command line has no "
                                     "limit): the page cannot cancel a job before its first step")
            job = Job(uuid.uuid4().hex[:8], name, method, int(steps))
            folder = self.library.images_dir(name)
            config = dict(model=self.model, images=str(folder), name=name, class_phrase=class_phrase.strip(),
                          method=method, steps=int(steps), lr=lr, batch_size=int(batch_size), seed=int(seed),
                          checkpoint_every=int(sample_every or 0), keep_checkpoints=KEEP_CHECKPOINTS,
                          save_state=False, model_config=self.model_config, method_args=method_args)
            TrainConfig(**config, out=str(self.library.output_path(name, method)))  # its checks, before any copy
            self.library.reserve(name)  # until the job ends, no entry can be renamed to its name
            try:
                shutil.rmtree(folder, ignore_errors=True)  # no entry or job has this name: a leftover of nothing
                folder.mkdir(parents=True)
                for i, p in enumerate(images):
                    shutil.copyfile(p, folder / f"{i:02d}{p.suffix.lower()}")
                staging = self.library.staging(job.id)
                cfg = TrainConfig(**config, out=str(self.library.output_path(name, method, staging)))
            except BaseException:
                self.library.remove_images(name)
                self.library.end_staging(job.id)
                self.library.release(name)
                raise
            self.job = job
            self._thread = threading.Thread(target=self._run, args=(job, cfg, int(sample_every or 0)), daemon=True)
            self._thread.start()
        if blocking:
            self._thread.join()
        return job

    def cancel(self) -> str:
        job = self.job
        if job is None or job.finished:
            return "no training job is running"
        if job.steps - job.step <= 1:  # the trainer stops between steps, and after the last one the job is done
            return f"<{job.name}> is at its last step: it finishes and goes into the library"
        job.cancel.set()
        if job.status in ("starting", "running"):
            job.status = "cancelling"
        return (f"cancelling <{job.name}>: training stops when step {job.step + 1} ends (the trainer checks after "
                "every step); nothing will be added to the library")

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current job's thread ends (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, job: Job, cfg, sample_every: int) -> None:

        def report(r) -> bool:
            if job.status != "cancelling":
                job.status = "running"
            job.step = r.step
            job.losses.append(r.loss)
            if sample_every and r.step > sample_every and not job.cancel.is_set():
                last = (r.step - 1) // sample_every * sample_every  # the checkpoint of the previous interval
                if last and (not job.sample_steps or job.sample_steps[-1] != last) and step_path(cfg.out, last).exists():
                    self._sample(job, cfg, step_path(cfg.out, last), last)
            return job.cancel.is_set()

        try:
            train(cfg, progress=False, callback=report)
            job.result = self.library.add(Path(cfg.out), job.name).path
            # the message before the status: a page tick between the two must not see a finished job without it
            job.message, job.status = f"<{job.name}> is in the library: {self.library.relative(job.result)}", "done"
        except Cancelled as e:
            self.library.remove_images(job.name)
            job.message = f"cancelled after step {e.step} of {job.steps}; nothing was added to the library"
            job.status = "cancelled"
        except Exception as e:  # shown in the page (library-relative), logged with its trace
            logger.exception("training job %s (<%s>, %s) failed", job.id, job.name, job.method)
            self.library.remove_images(job.name)
            job.message = self.library.scrub(f"training failed at step {job.step} of {job.steps}: "
                                             f"{type(e).__name__}: {e}; the library is unchanged")
            job.status = "failed"
        finally:
            self.library.end_staging(job.id)
            self.library.release(job.name)

    def _sample(self, job: Job, cfg, checkpoint: Path, step: int) -> None:
        """An image of ``a photo of <name>`` from ``checkpoint`` (seed 0), kept in ``job.sample``."""
        try:
            model = load_generator(self.model, [checkpoint], self.model_config, self.device, self.dtype)
            job.sample = model([f"a photo of <{job.name}>"], generator=torch.Generator().manual_seed(0),
                               num_inference_steps=20).images[0]
            job.sample_steps.append(step)
        except Exception as e:  # a sample is a nicety: never stop training for it
            logger.warning("sample at step %d of job %s failed: %s", step, job.id, e)
            job.message = self.library.scrub(f"(sample at step {step} failed: {e})")
