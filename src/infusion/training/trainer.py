"""One trainer for every method: data, caching, accelerate, checkpoints/resume, progress.

Randomness is drawn from a generator seeded by (seed, step), so a resumed run follows exactly
the trajectory of an uninterrupted one. With ``--mlm-lambda > 0`` the loss gains the diverse-context
MLM term (``regularizer.py``), its batch drawn from the same step generator after the diffusion batch.
"""

from __future__ import annotations

import json
import logging
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
from infusion.training.config import TrainConfig
from infusion.training.data import caption_templates, encode_latent_stats, load_concept_images

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


def train(cfg: TrainConfig, pipe=None, progress: bool = True, callback=None):
    """Run ``cfg``; returns what the method exports (an ``infusion.Concept`` for Infusion).

    ``pipe``: an already loaded base pipeline (tests, notebooks); otherwise ``cfg.model`` is loaded.
    ``callback(StepReport) -> bool | None`` after every step (the web page's live progress); returning True stops
    the run cleanly (``Cancelled``, with the resume state saved at that step).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    method_cls = get_method(cfg.method)  # fail fast on a bad method name
    _allow_new_precision(cfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    out = Path(cfg.out)
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
    resolution = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    images, sizes = load_concept_images(cfg.images, resolution, with_sizes=True)
    mean, std = encode_latent_stats(pipe.vae, images, flip=cfg.flip)  # (M, 4, h, w) each
    family = family_of(pipe)
    time_ids = prior_time_ids = None
    if family == SDXL:  # micro-conditioning of each image, as diffusers' SDXL scripts: original size, crop, target
        time_ids = torch.stack([families.time_ids(o, c, (resolution, resolution)) for o, c in sizes])  # (N, 6)
        time_ids = torch.cat([time_ids] * (len(mean) // len(time_ids)))  # (M, 6): mirrored copies keep their ids
        prior_time_ids = families.time_ids((resolution, resolution), (0, 0), (resolution, resolution))  # (6,)
    scaling = pipe.vae.config.scaling_factor
    sched = pipe.scheduler
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(sched.config)  # the training-time forward process

    fingerprint = base_fingerprint(*families.fingerprint_modules(pipe))

    with LOAD_LOCK:  # methods build parameters and layers: not while another thread loads a model (models.py)
        method = method_cls(pipe, cfg)
    method.attach_latents(mean * scaling, std * scaling)  # (M, 4, h, w) each: what the instance rows are drawn from
    method.to(accelerator.device)
    captions = [t.format(f"<{cfg.name}>") for t in caption_templates(cfg.model)]
    prior = method.prior_data()  # DreamBooth-style class prior examples, or None
    all_captions = captions + (prior.captions if prior is not None else [])
    text_cache = method.encode_captions(all_captions) if method.cache_text else None
    reg = mlm = None
    if cfg.mlm_lambda > 0:  # frozen contextualizer; the method says what L_MLM reaches
        from functools import partial

        from infusion.training.regularizer import build_regularizer, mlm_term

        mlm_side = method.mlm_text_side()
        reg = build_regularizer(cfg, mlm_side, pipe.tokenizer, base_fingerprint(pipe.text_encoder),
                                batch_size=cfg.mlm_batch or method.mlm_batch_size)
        mlm = partial(mlm_term, reg, mlm_side)  # generator -> lambda * L_MLM
    params = method.trainable_parameters()
    if not params:
        raise ValueError(f"method {cfg.method!r} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=method.learning_rate(), weight_decay=method.weight_decay)
    start = 0
    if resume_from is not None:
        start = load_state(resume_from, method, optimizer, cfg)
        logger.info("resuming from %s at step %d", resume_from, start)
    model, optimizer = accelerator.prepare(method, optimizer)

    import sys

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.method} <{cfg.name}>",
               disable=not (progress and accelerator.is_local_main_process),
               mininterval=0.1 if sys.stderr.isatty() else 30)  # CI logs and nohup files: a line every 30 s, not per step
    T = noise_sched.config.num_train_timesteps
    t_hi = method.max_train_timestep(T)  # instance rows' timesteps: [0, t_hi)
    device = accelerator.device
    loss_ema = None
    for step in bar:
        g = _step_generator(cfg.seed, step, accelerator.process_index)
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=g)
        cap = torch.randint(len(captions), (cfg.batch_size,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, t_hi, (cfg.batch_size,), generator=g)
        z_t = noise_sched.add_noise(z0, noise, t)
        if prior is not None:  # the same number of class-prior rows, drawn after the instance rows
            pidx = torch.randint(len(prior.mean), (cfg.batch_size,), generator=g)
            pz0 = (prior.mean[pidx] + prior.std[pidx] * torch.randn(prior.mean[pidx].shape, generator=g)) * scaling
            pnoise = torch.randn(pz0.shape, generator=g)
            pt = torch.randint(0, T, (cfg.batch_size,), generator=g)
            z0, noise, t = torch.cat([z0, pz0]), torch.cat([noise, pnoise]), torch.cat([t, pt])
            z_t = torch.cat([z_t, noise_sched.add_noise(pz0, pnoise, pt)])
            cap = torch.cat([cap, len(captions) + pidx])
        if noise_sched.config.prediction_type == "v_prediction":
            target = noise_sched.get_velocity(z0, noise, t)
        else:
            target = noise
        text = text_cache.select(cap) if text_cache is not None else method.encode_captions([all_captions[i] for i in cap])
        if time_ids is not None:  # (rows, 6): instance rows' images, then the prior rows' (generated at the resolution)
            text = text.with_time_ids(torch.cat([time_ids[idx]] + ([prior_time_ids.expand(len(cap) - len(idx), -1)]
                                                                   if len(cap) > len(idx) else [])))
        method.prepare_batch(idx, noise[: cfg.batch_size], t[: cfg.batch_size], noise_sched, g)
        z_t, t, target = z_t.to(device, pipe.unet.dtype), t.to(device), target.to(device)
        with accelerator.autocast():
            pred = model(z_t, t, text.to(device))
        B = cfg.batch_size
        loss = F.mse_loss(pred[:B].float(), target[:B].float())
        if prior is not None:
            loss = loss + prior.weight * F.mse_loss(pred[B:].float(), target[B:].float())
        if mlm is not None:  # lambda * L_MLM, its prompts and mask drawn from this step's generator
            with accelerator.autocast():
                loss = loss + mlm(g)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step}: lower --lr (now {method.learning_rate()}) or use "
                f"--mixed-precision no; the last checkpoint ({state_path(out)}) is intact"
            )
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.4f}", **({"mlm": f"{reg.last_loss:.3f}"} if reg is not None else {}),
                        refresh=False)  # set_postfix would otherwise print a line per step when not a terminal
        done = step + 1
        if callback is not None and callback(StepReport(done, cfg.steps, loss.item(), loss_ema)) and done < cfg.steps:
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
                accelerator.unwrap_model(model).export(step_path(out, done), fingerprint)
    bar.close()
    _check_finite(method, cfg.steps - 1, out)
    accelerator.wait_for_everyone()
    result = None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if cfg.save_state:
            save_state(state_path(out), unwrapped, optimizer, cfg.steps, cfg)
        result = unwrapped.export(out, fingerprint)
    return result
