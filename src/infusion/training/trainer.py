"""One trainer for every method: data, caching, accelerate, checkpoints/resume, progress.

Randomness is drawn from a generator seeded by (seed, step), so a resumed run follows exactly
the trajectory of an uninterrupted one. With ``--mlm-lambda > 0`` the loss gains the diverse-context
MLM term (``regularizer.py``), its batch drawn from the same step generator after the diffusion batch.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from infusion.core import model_families as families
from infusion.core.base_models import LOAD_LOCK, load_base_pipeline
from infusion.core.customization_files import base_fingerprint, output_parts
from infusion.core.model_families import SDXL, family_of
from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic
from infusion.methods import get_method
from infusion.methods.registry import get_spec
from infusion.training.config import TrainConfig
from infusion.training.data import caption_templates, encode_latent_stats, find_images, load_concept_images
from infusion.training.precision import FrozenWeights, floating_tensors, weight_dtype

logger = logging.getLogger(__name__)


def state_path(out: str | Path) -> Path:
    """Resume state beside the output: ``mycat.safetensors`` -> ``mycat.state.safetensors``."""
    out = Path(out)
    return out.with_name(output_parts(out)[0] + ".state.safetensors")


def step_path(out: str | Path, step: int) -> Path:
    """Intermediate result: ``mycat.safetensors`` -> ``mycat-step100.safetensors``."""
    out = Path(out)
    stem, ext = output_parts(out)
    return out.with_name(f"{stem}-step{step}{ext}")


def drop_old_checkpoints(out: str | Path, step: int, every: int, keep: int) -> list[Path]:
    """Before the ``-stepN`` output of ``step`` is written: remove the older ones that would leave more than ``keep``
    (those at ``every``, ``2*every``, ... up to ``step - keep*every``); files or folders (DreamBooth's whole
    pipelines). -> the paths removed."""
    removed = []
    for s in range(every, step - keep * every + 1, every):
        path = step_path(out, s)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


def _step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """Randomness of one step on one process: a function of (seed, step, rank) only, so resuming
    is exact and each GPU of ``accelerate launch`` draws its own batch."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def save_state(path: Path, method, optimizer, step: int, cfg: TrainConfig) -> None:
    """Trainable tensors + AdamW moments + step, one safetensors file, written atomically."""
    tensors = {f"param/{k}": v.detach().cpu().contiguous() for k, v in method.trainable_state().items()}
    names = list(method.trainable_state())
    by_id = {id(p): n for n, p in method.trainable_state().items()}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{by_id[id(p)]}/{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
            elif isinstance(v, (bool, int, float)):  # plain numbers (bitsandbytes' step count): 0-d, typed back on load
                tensors[f"optim_number/{by_id[id(p)]}/{k}"] = torch.tensor(v, dtype=torch.float64 if isinstance(
                    v, float) else torch.int64)
    meta = {"step": str(step), "config": json.dumps(cfg.to_dict(), default=str), "params": json.dumps(names),
            "trainable_parameters": str(sum(v.numel() for v in method.trainable_state().values()))}
    save_safetensors_atomic(tensors, path, meta)


def load_state(path: Path, method, optimizer, cfg: TrainConfig) -> int:
    """Restore a state written by ``save_state``; returns the step to continue from."""
    tensors, meta = read_safetensors(path, "training state")
    if "step" not in meta:
        raise ValueError(f"{path} is not an infusion training state file")
    saved = json.loads(meta["config"])
    defaults = {"mlm_lambda": 0.0, "mlm_prompts": "everyday", "mlm_batch": None}  # state files older than these fields
    for key in ("method", "name", "class_phrase", "model", "batch_size", "seed", "mlm_lambda", "mlm_prompts", "mlm_batch"):
        if saved.get(key, defaults.get(key)) != getattr(cfg, key):
            raise ValueError(
                f"cannot resume from {path}: it was trained with {key}={saved.get(key, defaults.get(key))!r}, this run "
                f"has {key}={getattr(cfg, key)!r}"
            )
    params = method.trainable_state()
    for name, p in params.items():
        key = f"param/{name}"
        if key not in tensors or tensors[key].shape != p.shape:
            raise ValueError(f"cannot resume from {path}: parameter {name} missing or of another shape")
        with torch.no_grad():
            p.copy_(tensors[key].to(p.device, p.dtype))
    for name, p in params.items():
        st = {k.split("/")[-1]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"optim/{name}/")}
        st.update({k.split("/")[-1]: v.item() for k, v in tensors.items() if k.startswith(f"optim_number/{name}/")})
        if st:
            optimizer.state[p] = st
    return int(meta["step"])


def _check_finite(method, step: int, out: Path) -> None:
    """Stop with a clear error when a trained tensor went NaN/Inf, before anything overwrites the last good checkpoint."""
    for name, p in method.trainable_state().items():
        if not torch.isfinite(p).all():
            raise FloatingPointError(
                f"trained parameter {name} is not finite (NaN/inf) after step {step + 1}: lower --lr (now "
                f"{method.learning_rate()}) or use --mixed-precision no; nothing was written, the last checkpoint "
                f"({state_path(out)}) is intact"
            )


def _allow_new_precision(mixed_precision: str) -> None:
    """accelerate keeps one ``AcceleratorState`` per process and refuses an ``Accelerator`` with another mixed
    precision; a process that trains several runs (tests, the web page, the results benchmark) may switch, so
    forget the previous run's state (the process group, ``PartialState``, is kept)."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


OPTIMIZERS = ("adamw", "adamw8bit")


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``params`` (the method's trainable tensors only: frozen weights get no optimizer state).
    ``adamw8bit``: bitsandbytes' ``AdamW8bit`` (moments in 8 bits, as diffusers' scripts' ``--use_8bit_adam``), an
    optional dependency (``pip install bitsandbytes``); not measured here (no GPU)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw8bit":
        return _bitsandbytes().optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"--optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")


def _check_out(out: Path, cfg: TrainConfig) -> None:
    """``--out`` of the kind the method writes (one file, or a folder), said before a model loads."""
    spec = get_spec(cfg.method)
    if spec.output == "file" and out.is_dir():
        raise ValueError(f"--out {out} is a folder; {cfg.method} writes one file: e.g. --out "
                         f"{spec.output_path(out, cfg.name)}")
    if spec.output == "folder" and out.is_file():
        raise ValueError(f"--out {out} is a file; {cfg.method} writes a folder (a diffusers pipeline): give a folder "
                         "name")


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError:
        raise ImportError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (or use --optimizer "
                          "adamw)") from None
    return bitsandbytes


@dataclass
class StepReport:
    """What ``train(callback=...)`` gets after every step: steps done, of ``total``, this step's loss, its EMA."""

    step: int
    total: int
    loss: float
    loss_ema: float


class Cancelled(Exception):
    """Raised by ``train`` when its callback asked it to stop: the resume state holds the step it stopped at
    (``state`` None when the run keeps none: ``save_state=False``), the last ``-stepN`` checkpoint is kept, and no
    final output is written."""

    def __init__(self, step: int, state: Path | None):
        super().__init__(f"training cancelled after step {step}" + (f"; resume state: {state}" if state else ""))
        self.step, self.state = step, state


@dataclass
class StepBatch:
    """One step's rows as ``Trainer.draw`` makes them: instance image indices idx (B,), caption indices cap (rows,),
    noisy latents z_t (rows, 4, h, w), timesteps t (rows,), the target (rows, 4, h, w), and the step's generator
    (the MLM term draws from it after the method's ``prepare_batch``)."""

    idx: torch.Tensor
    cap: torch.Tensor
    z_t: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    generator: torch.Generator


class Trainer:
    """One run of ``cfg``, set up (base model, cached latents and caption states, method, optimizer, resume state)
    and stepped: ``step(i)`` is one whole iteration (draw the batch, encode, forward, loss, backward, optimizer
    step), ``run()`` the loop with progress, checkpoints and the final export. ``train`` is ``Trainer(...).run()``;
    the benchmarks time ``step`` alone (benchmarks/bench_peers.py).

    ``pipe``: an already loaded base pipeline (tests, notebooks); otherwise ``cfg.model`` is loaded.
    With ``--mixed-precision fp16|bf16`` the frozen base weights (UNet, text encoders, VAE, the MLM contextualizer)
    are held in that dtype from the end of ``__init__`` and the trained tensors stay fp32 (``precision.py``);
    exports see the fp32 originals, and ``run()`` puts them back when it ends, however it ends, so the caller's
    pipeline is left bit-equal. A trainer stepped by hand (the benchmarks) calls ``restore_weights()`` itself.
    ``callback(StepReport) -> bool | None`` after every step (the web page's live progress); returning True stops
    the run cleanly (``Cancelled``, with the resume state saved at that step).
    """

    def __init__(self, cfg: TrainConfig, pipe=None, progress: bool = True, callback=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        method_cls = get_method(cfg.method)  # fail fast on a bad method name
        if cfg.optimizer == "adamw8bit":
            _bitsandbytes()  # and on a missing optional dependency, before any model is loaded
        self.cfg, self.progress, self.callback = cfg, progress, callback
        _allow_new_precision(cfg.mixed_precision)
        self.accelerator = accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
        if cfg.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not _cpu_has_bf16():
            logger.warning("--mixed-precision bf16 on a CPU without bf16 instructions is slow (a Custom Diffusion step "
                           "measured 21x fp32's, benchmarks/results/peers_cpu.json): --mixed-precision no is faster here")
        if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            raise ValueError("--mixed-precision fp16 needs a CUDA GPU; on a CPU use no (or bf16)")
        set_seed(cfg.seed)
        self.out = out = Path(cfg.out)
        _check_out(out, cfg)
        find_images(cfg.images)  # a mistyped --images is said before a model loads
        out.parent.mkdir(parents=True, exist_ok=True)
        resume_from = None
        if cfg.resume:
            resume_from = state_path(out) if cfg.resume == "auto" else Path(cfg.resume)
            if cfg.resume != "auto" and not resume_from.is_file():
                raise FileNotFoundError(f"resume state not found: {resume_from}")
            if not resume_from.is_file():
                resume_from = None

        if pipe is None:
            pipe = load_base_pipeline(cfg.model, config=cfg.model_config)
        pipe.to(accelerator.device)
        self.pipe = pipe
        resolution = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        images, sizes = load_concept_images(cfg.images, resolution, with_sizes=True)
        logger.info("%s <%s>: %d image(s) at %d px, %d steps, batch %d, on %s%s", cfg.method, cfg.name, len(images),
                    resolution, cfg.steps, cfg.batch_size, accelerator.device,
                    "" if cfg.mixed_precision == "no" else f", {cfg.mixed_precision}")
        if len(images) < 3:
            logger.warning("only %d image(s) of <%s>: 3-6 photos in different scenes teach the concept rather than "
                           "the photo", len(images), cfg.name)
        # cached latents: the VAE encodes each image (and its mirror) once, a latent is drawn per step from its posterior
        self.mean, self.std = mean, std = encode_latent_stats(pipe.vae, images, flip=cfg.flip)  # (M, 4, h, w) each
        self.time_ids = self.prior_time_ids = None
        if family_of(pipe) == SDXL:  # micro-conditioning of each image, as diffusers' SDXL scripts: original size, crop, target
            time_ids = torch.stack([families.time_ids(o, c, (resolution, resolution)) for o, c in sizes])  # (N, 6)
            self.time_ids = torch.cat([time_ids] * (len(mean) // len(time_ids)))  # (M, 6): mirrored copies keep their ids
            self.prior_time_ids = families.time_ids((resolution, resolution), (0, 0), (resolution, resolution))  # (6,)
        self.scaling = pipe.vae.config.scaling_factor
        self.noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)  # the training-time forward process

        self.fingerprint = base_fingerprint(*families.fingerprint_modules(pipe))
        # the base model's tensors, before the method adds its own (learned vectors, Deltas, LoRA factors, buffers)
        base_tensors = floating_tensors([pipe.unet, pipe.vae, *families.text_encoders(pipe)])

        with LOAD_LOCK:  # methods build parameters and layers: not while another thread loads a model (models.py)
            self.method = method = method_cls(pipe, cfg)
        method.attach_latents(mean * self.scaling, std * self.scaling)  # (M, 4, h, w) each: the instance rows' source
        method.to(accelerator.device)
        self.captions = [t.format(f"<{cfg.name}>") for t in caption_templates(cfg.model)]
        self.prior = prior = method.prior_data()  # DreamBooth-style class prior examples, or None
        self.all_captions = self.captions + (prior.captions if prior is not None else [])
        # cached text states: a method whose text side is frozen encodes its captions once, not every step
        self.text_cache = method.encode_captions(self.all_captions) if method.cache_text else None
        self.reg = self.mlm = None
        if cfg.mlm_lambda > 0:  # frozen contextualizer; the method says what L_MLM reaches
            from functools import partial

            from infusion.training.regularizer import build_regularizer, mlm_term

            mlm_side = method.mlm_text_side()
            self.reg = build_regularizer(cfg, mlm_side, pipe.tokenizer, base_fingerprint(pipe.text_encoder),
                                         batch_size=cfg.mlm_batch or method.mlm_batch_size)
            self.mlm = partial(mlm_term, self.reg, mlm_side)  # generator -> lambda * L_MLM
            base_tensors += floating_tensors([self.reg.contextualizer])
        params = method.trainable_parameters()  # only these: frozen weights get no optimizer state
        if not params:
            raise ValueError(f"method {cfg.method!r} has no trainable parameters")
        optimizer = make_optimizer(cfg.optimizer, params, lr=method.learning_rate(), weight_decay=method.weight_decay)
        self.start = 0
        if resume_from is not None:
            self.start = load_state(resume_from, method, optimizer, cfg)
            logger.info("resuming from %s at step %d", resume_from, self.start)
        self.model, self.optimizer = accelerator.prepare(method, optimizer)
        T = self.noise_sched.config.num_train_timesteps
        self.T, self.t_hi = T, method.max_train_timestep(T)  # instance rows' timesteps: [0, t_hi)
        # Gradient buffers are zeroed in place and kept between steps on a CPU (train_dreambooth.py's default): freed,
        # a large buffer goes back to the OS and the next backward page-faults it in again (DreamBooth's 860 M
        # gradients: 8.4 s a step kept, 10.6 s freed; benchmarks/bench_peers.py --also-free-grads). Elsewhere they are
        # freed (torch's default; a GPU's caching allocator reuses the memory). Every method's trainable tensors get
        # a gradient every step, so both give the same numbers.
        self.set_grads_to_none = accelerator.device.type != "cpu"
        # last, so that nothing can fail with the caller's pipeline cast: the cached latents, prior and text states
        # were made in fp32; from here frozen weights are fp16/bf16, the trained ones (what requires grad now) fp32
        self.frozen = FrozenWeights(base_tensors, weight_dtype(cfg.mixed_precision))
        self.frozen.cast()

    def restore_weights(self) -> None:
        """Give the frozen weights their fp32 originals back (bit-equal; ``run()`` does it when it ends)."""
        self.frozen.restore()

    def step(self, step: int) -> torch.Tensor:
        """One whole iteration of step ``step`` (its randomness from ``_step_generator``): ``update(draw(step))`` ->
        the loss (a 0-d tensor on the device; not read back here, so that a GPU is not synchronised before the
        optimizer step is queued)."""
        return self.update(self.draw(step))

    def draw(self, step: int) -> StepBatch:
        """Step ``step``'s rows: latents drawn from the cached posteriors, noise, timesteps, caption indices."""
        cfg, prior, scaling, mean, std = self.cfg, self.prior, self.scaling, self.mean, self.std
        noise_sched, B = self.noise_sched, cfg.batch_size
        g = _step_generator(cfg.seed, step, self.accelerator.process_index)
        idx = torch.randint(len(mean), (B,), generator=g)
        cap = torch.randint(len(self.captions), (B,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, self.t_hi, (B,), generator=g)
        z_t = noise_sched.add_noise(z0, noise, t)
        if prior is not None:  # the same number of class-prior rows, drawn after the instance rows
            pidx = torch.randint(len(prior.mean), (B,), generator=g)
            pz0 = (prior.mean[pidx] + prior.std[pidx] * torch.randn(prior.mean[pidx].shape, generator=g)) * scaling
            pnoise = torch.randn(pz0.shape, generator=g)
            pt = torch.randint(0, self.T, (B,), generator=g)
            z0, noise, t = torch.cat([z0, pz0]), torch.cat([noise, pnoise]), torch.cat([t, pt])
            z_t = torch.cat([z_t, noise_sched.add_noise(pz0, pnoise, pt)])
            cap = torch.cat([cap, len(self.captions) + pidx])
        if noise_sched.config.prediction_type == "v_prediction":
            target = noise_sched.get_velocity(z0, noise, t)
        else:
            target = noise
        self.method.prepare_batch(idx, noise[:B], t[:B], noise_sched, g)
        return StepBatch(idx, cap, z_t, t, target, g)

    def update(self, batch: StepBatch) -> torch.Tensor:
        """The captions' text states (cached, or encoded through the trainable text side), the forward, the loss,
        its backward and the optimizer step -> the loss (0-d, on the device)."""
        accelerator, method, prior, B = self.accelerator, self.method, self.prior, self.cfg.batch_size
        idx, cap = batch.idx, batch.cap
        if self.text_cache is not None:
            text = self.text_cache.select(cap)
        else:
            with accelerator.autocast():  # the frozen text encoder is in the weight dtype, the learned vectors fp32
                text = method.encode_captions([self.all_captions[i] for i in cap])
        if self.time_ids is not None:  # (rows, 6): instance rows' images, then the prior rows' (generated at the resolution)
            prior_ids = [self.prior_time_ids.expand(len(cap) - len(idx), -1)] if len(cap) > len(idx) else []
            text = text.with_time_ids(torch.cat([self.time_ids[idx]] + prior_ids))
        device = accelerator.device
        z_t, t, target = batch.z_t.to(device, self.pipe.unet.dtype), batch.t.to(device), batch.target.to(device)
        with accelerator.autocast():
            pred = self.model(z_t, t, text.to(device))
        loss = F.mse_loss(pred[:B].float(), target[:B].float())
        if prior is not None:
            loss = loss + prior.weight * F.mse_loss(pred[B:].float(), target[B:].float())
        if self.mlm is not None:  # lambda * L_MLM, its prompts and mask drawn from this step's generator
            with accelerator.autocast():
                loss = loss + self.mlm(batch.generator)
        accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=self.set_grads_to_none)
        return loss.detach()

    def run(self):
        """Steps ``start`` .. ``cfg.steps`` with progress, callbacks and checkpoints; returns what the method exports.
        The frozen weights get their fp32 originals back when it ends, finished, cancelled or failed."""
        try:
            return self._run()
        finally:
            self.restore_weights()

    def _run(self):
        import sys

        cfg, accelerator, model, optimizer, out = self.cfg, self.accelerator, self.model, self.optimizer, self.out
        method = self.method
        bar = tqdm(range(self.start, cfg.steps), initial=self.start, total=cfg.steps,
                   desc=f"train {cfg.method} <{cfg.name}>",
                   disable=not (self.progress and accelerator.is_local_main_process),
                   mininterval=0.1 if sys.stderr.isatty() else 30)  # CI logs and nohup files: a line every 30 s, not per step
        loss_ema = None
        for step in bar:
            loss = self.step(step).item()  # the one read-back of the step, after its optimizer step is queued
            if not math.isfinite(loss):  # the parameters just took a non-finite step: stop before anything is written
                raise FloatingPointError(
                    f"loss is {loss} at step {step}: lower --lr (now {method.learning_rate()}) or use "
                    f"--mixed-precision no; the last checkpoint ({state_path(out)}) is intact"
                )
            loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
            bar.set_postfix(loss=f"{loss_ema:.4f}", **({"mlm": f"{self.reg.last_loss:.3f}"} if self.reg is not None else {}),
                            refresh=False)  # set_postfix would otherwise print a line per step when not a terminal
            done = step + 1
            if self.callback is not None and self.callback(StepReport(done, cfg.steps, loss, loss_ema)) and done < cfg.steps:
                _check_finite(method, step, out)
                if accelerator.is_main_process and cfg.save_state:
                    save_state(state_path(out), accelerator.unwrap_model(model), optimizer, done, cfg)
                bar.close()
                raise Cancelled(done, state_path(out) if cfg.save_state else None)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                _check_finite(method, step, out)
                if accelerator.is_main_process:
                    if cfg.save_state:
                        save_state(state_path(out), accelerator.unwrap_model(model), optimizer, done, cfg)
                    if cfg.keep_checkpoints:  # before the new one is written: never more than keep_checkpoints on disk
                        drop_old_checkpoints(out, done, cfg.checkpoint_every, cfg.keep_checkpoints)
                    with self.frozen.full_precision():  # a whole pipeline (DreamBooth) is written in fp32, as always
                        accelerator.unwrap_model(model).export(step_path(out, done), self.fingerprint)
        bar.close()
        _check_finite(method, cfg.steps - 1, out)
        accelerator.wait_for_everyone()
        self.restore_weights()  # the export sees the fp32 base weights
        result = None
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            if cfg.save_state:
                save_state(state_path(out), unwrapped, optimizer, cfg.steps, cfg)
            result = unwrapped.export(out, self.fingerprint)
        return result


def train(cfg: TrainConfig, pipe=None, progress: bool = True, callback=None):
    """Run ``cfg``; returns what the method exports (an ``infusion.Concept`` for Infusion). Arguments: ``Trainer``."""
    return Trainer(cfg, pipe, progress, callback).run()
