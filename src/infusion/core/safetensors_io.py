"""Atomic, reproducible safetensors writes: a crash mid-write never leaves a truncated file behind, and the same
tensors and metadata always give the same bytes."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save


def canonical_header(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its JSON header's keys sorted. safetensors writes the metadata map in hash
    order, which differs from process to process, so two runs that computed the same file would differ in bytes
    (the web page's and the CLI's training must give one file). Offsets are relative to the data, so only the
    header and its 8-byte length change; the header stays space-padded to a multiple of 8, as safetensors does."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to a temp file in ``path``'s folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
        Path(tmp).write_bytes(canonical_header(blob))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_safetensors(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file.

    ``FileNotFoundError`` when missing, ``ValueError`` when it is not a safetensors file; ``what``
    names the expected kind of file in the messages ("concept file", "training state", ...).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for other files
        raise ValueError(f"{path} is not a safetensors file ({what} expected): {e}") from None
