"""Loading a base Stable Diffusion model (SD 1.x, 2.x or SDXL): diffusers folder, single-file checkpoint,
hub id, or a built-in name (``tiny`` / ``tiny-sd2`` / ``tiny-sdxl`` random models for smoke runs, ``world``
the built-in world model). The family is read from the files; SDXL gets the XL pipeline class."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from infusion.core import model_configs as tiny
from infusion.core import quiet_logs
from infusion.core.model_families import SDXL, family_of, family_of_files

quiet_logs.install()

BUILTIN = ("tiny", "tiny-sd2", "tiny-sdxl", "world")
TINY = {"tiny": "tiny_sd_pipeline", "tiny-sd2": "tiny_sd2_pipeline", "tiny-sdxl": "tiny_sdxl_pipeline"}


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _offline_types() -> tuple[type, ...]:
    """The exception types that mean "the Hub cannot be reached": the hub's own offline errors, and a failed
    connection from either HTTP library it has used (httpx, requests), or the OS."""
    from huggingface_hub import errors

    found = [getattr(errors, n, None) for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")] + [ConnectionError]
    for module, name in (("httpx", "TransportError"), ("requests.exceptions", "ConnectionError")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(t for t in found if isinstance(t, type))


def _is_offline_error(e: Exception) -> bool:
    """Whether loading failed for want of the Hub: offline mode (``HF_HUB_OFFLINE``), or an offline or connection
    error in the exception's chain (by type; by the words of its message where a library wrapped it in another)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    types = _offline_types()
    for _ in range(10):  # the chain, a few links deep
        if e is None:
            break
        if isinstance(e, types):
            return True
        text = f"{type(e).__name__} {e}".lower()
        if any(w in text for w in ("offline", "failed to connect", "connection error", "internet connection",
                                   "local_files_only", "name or service not known")):
            return True
        e = e.__cause__ or e.__context__
    return False


def _hub_message(model: str, e: Exception) -> str:
    """What a failed hub load means, in the user's terms (diffusers' own text points at options they cannot pass)."""
    if _is_offline_error(e):
        return (f"model {model!r}: no local file or folder of that name, not in the local Hugging Face cache, and the "
                "Hub cannot be reached: download it "
                f"once where there is network (hf download {model}), or pass a local diffusers folder or a "
                ".safetensors file with --model")
    return f"could not load model {model!r}: not a local folder or file, and not a loadable hub id ({_first_line(e)})"


def family_class(cls, family: str):
    """The pipeline class of ``family`` for a requested class: on SDXL, the stock SD pipeline becomes the XL one and
    a class with an ``sdxl_class`` attribute (``InfusionPipeline``) becomes that; other classes are kept."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == SDXL:
        if cls is StableDiffusionPipeline:
            return StableDiffusionXLPipeline
        return getattr(cls, "sdxl_class", None) or cls
    return cls


def resolve_model(model: str) -> str:
    """Map a built-in name to its path; leave paths and hub ids alone."""
    if model == "world":
        try:
            from infusion.world import model_dir
        except ImportError as e:  # the world ships in its own issue
            raise ValueError("the built-in world model is not available in this version") from e
        return str(model_dir())
    return model


# diffusers and transformers build models under accelerate's init_empty_weights, which patches torch for the whole
# process: a second thread building a module meanwhile gets meta tensors. One load at a time (the web page trains
# in one thread and generates in another).
LOAD_LOCK = threading.RLock()


def load_base_pipeline(model: str, pipeline_cls=None, torch_dtype: torch.dtype | None = None, config: str | None = None):
    """A ``StableDiffusionPipeline`` (or ``pipeline_cls``) for ``model``; thread-safe (``LOAD_LOCK``)."""
    with LOAD_LOCK:
        return _load(model, pipeline_cls, torch_dtype, config)


def _load(model: str, pipeline_cls=None, torch_dtype: torch.dtype | None = None, config: str | None = None):
    """A ``StableDiffusionPipeline`` (or ``pipeline_cls``) for ``model``.

    model: ``tiny`` | ``world`` | a diffusers folder | a single-file ``.safetensors`` checkpoint
    (``config``: a local diffusers folder or repo id with the matching configs, needed offline) |
    a hub id (needs network or a local cache).
    """
    from diffusers import StableDiffusionPipeline

    cls = pipeline_cls or StableDiffusionPipeline
    if model in TINY:
        pipe = getattr(tiny, TINY[model])()
        want = family_class(cls, family_of(pipe))
        pipe = pipe if isinstance(pipe, want) else want.from_pipe(pipe)
        pipe.model_id = model
        return pipe
    path = resolve_model(model)
    looks_local = path.startswith((".", "/", "~")) or Path(path).suffix.lower() in (".safetensors", ".ckpt")
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"--model {model}: no such file or folder")
    path = os.path.expanduser(path)
    if config is not None and os.path.isdir(config) and not (Path(config) / "model_index.json").is_file():
        raise ValueError(f"--model-config {config}: not a diffusers folder (no model_index.json)")
    try:
        family = family_of_files(path, config)
    except Exception as e:  # e.g. safetensors' "header too large" on an HTML error page saved as .safetensors
        if os.path.isfile(path):
            raise ValueError(f"{path} is not a readable .safetensors file (an interrupted download, or an HTML error "
                             f"page?): {type(e).__name__}: {e}") from e
        raise
    hub_error = None
    if family is None and not os.path.exists(path):  # a hub id: its model_index.json tells (cache or network)
        try:
            from diffusers import DiffusionPipeline

            family = "sdxl" if "XL" in DiffusionPipeline.load_config(path).get("_class_name", "") else "sd"
        except Exception as e:  # not cached and no network, or no such repo: from_pretrained would retry it all
            hub_error = e
    if family is not None:
        cls = family_class(cls, family)
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if family != "sdxl" else {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if os.path.isfile(path):
        if Path(path).suffix.lower() != ".safetensors":
            raise ValueError(f"{path}: only .safetensors single-file checkpoints are supported (a pickled .ckpt can run "
                             "code when loaded): use the model's .safetensors download, or its diffusers folder")
        if config is not None:
            kwargs["config"] = config
        try:
            pipe = cls.from_single_file(path, **kwargs)
        except (OSError, ValueError) as e:
            if config is not None or not _is_offline_error(e):
                raise
            raise ValueError(f"{path} is a single-file checkpoint: its configs and tokenizer come from the Hub, which "
                             "cannot be reached; pass --model-config with a local diffusers folder of the same model "
                             "family (its configs and tokenizer are enough)") from e
    elif os.path.isdir(path):
        if not (Path(path) / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        try:
            pipe = cls.from_pretrained(path, **kwargs)
        except OSError as e:  # e.g. "no file named scheduler_config.json": a partial download
            raise ValueError(f"model folder {path} is incomplete or unreadable ({_first_line(e)}): download it "
                             "again") from e
    else:
        if hub_error is not None:
            raise ValueError(_hub_message(model, hub_error)) from hub_error
        try:
            pipe = cls.from_pretrained(path, **kwargs)
        except Exception as e:
            raise ValueError(_hub_message(model, e)) from e
    pipe.model_id = model
    return pipe
