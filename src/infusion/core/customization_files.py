"""What every method writes besides its tensors: the metadata that says what a file is (DESIGN section 3).

Files: ``safetensors`` string metadata. Folders (DreamBooth, Custom Diffusion): the same keys in
``infusion.json`` inside the folder. ``read_metadata`` finds the method of any file or folder; ``base_fingerprint``
names the base weights a file was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from infusion import __version__

FOLDER_META = "infusion.json"
FILE_EXT = ".safetensors"


def output_parts(out: str | os.PathLike) -> tuple[str, str]:
    """An output's name without its file extension, and the extension: ``mycat.safetensors`` ->
    ``("mycat", ".safetensors")``; anything else (a folder such as ``cd-lambda0.001``) keeps its
    whole name -> ``("cd-lambda0.001", "")``. Dots inside names are not extensions."""
    name = Path(out).name
    if name.endswith(FILE_EXT) and len(name) > len(FILE_EXT):
        return name[: -len(FILE_EXT)], FILE_EXT
    return name, ""


def customization_metadata(cfg, method: str, file_format: str, fingerprint: str, **extra: str) -> dict[str, str]:
    """String metadata for a trained customization (DESIGN section 3's fields)."""
    meta = {
        "format": file_format,
        "format_version": "1",
        "method": method,
        "name": cfg.name,
        "class_phrase": cfg.class_phrase,
        "base_model": str(cfg.model),
        "base_fingerprint": fingerprint,
        "training": json.dumps(cfg.file_settings(), sort_keys=True, default=str),
        "library_version": __version__,
    }
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


def write_folder_metadata(folder: str | os.PathLike, meta: dict[str, str]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (FOLDER_META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, folder / FOLDER_META)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Metadata of a customization file or folder; ``ValueError`` when there is none."""
    path = Path(path)
    if path.is_dir():
        meta_file = path / FOLDER_META
        if not meta_file.is_file():
            raise ValueError(f"{path} is a folder without {FOLDER_META}: not a customization written by infusion train")
        return json.loads(meta_file.read_text())
    if not path.is_file():
        raise FileNotFoundError(f"customization file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for other files
        raise ValueError(f"{path} is not a safetensors file: {e}") from e


def storage_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def base_fingerprint(*modules: torch.nn.Module) -> str:
    """A cheap, stable fingerprint of frozen weights: sha256 over every parameter's name, shape and
    a strided sample of at most 4,096 of its values (float32). Detects another checkpoint without
    hashing gigabytes."""
    h = hashlib.sha256()
    for mod in modules:
        for name, p in mod.state_dict().items():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].to(torch.float32).cpu().contiguous()
            h.update(f"{name}:{tuple(p.shape)}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
