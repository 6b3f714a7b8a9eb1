"""The concept library: a folder of what ``infusion train`` writes, one entry per concept, as the web page shows it.

Layout: ``<library>/<name>.safetensors`` (Infusion, TI, P+, LoRA, Perfusion) or ``<library>/<name>/``
(DreamBooth, Custom Diffusion: folders with ``infusion.json``); the training images beside it in
``<library>/.images/<name>/``. Names are concept names (``concept.NAME_PATTERN``, at most 64 characters), so no
name can leave the folder. Every change is atomic: a new entry is moved in (``os.replace``) from a staging folder
inside the library once complete; a rename writes the renamed copy before removing the old one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from infusion.core.customization_files import FILE_EXT, FOLDER_META, read_metadata, storage_bytes
from infusion.core.placeholders import NAME_PATTERN
from infusion.methods.registry import get_spec
from infusion.training.data import IMAGE_SUFFIXES

IMAGES = ".images"
STAGING = ".staging"
MAX_NAME = 64


def check_name(name: str) -> str:
    """``name`` stripped, or ``ValueError`` saying why it cannot be a library entry (and a ``<name>`` in prompts)."""
    name = (name or "").strip()
    if not name:
        raise ValueError("give the concept a name (letters, digits, _ - .), e.g. mycat")
    if "/" in name or "\\" in name or name.startswith(".") or ".." in name:
        raise ValueError(f"name {name!r} is refused: names cannot contain slashes or '..', nor start with '.'")
    if len(name) > MAX_NAME or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"name {name!r} is refused: use letters, digits, _ - . (starting with a letter or digit, "
                         f"at most {MAX_NAME} characters)")
    return name


@dataclass
class Entry:
    """One library entry: its path and what its metadata says."""

    name: str
    path: Path
    method: str
    class_phrase: str
    base_model: str
    base_fingerprint: str
    family: str
    bytes: int
    modified: float
    images: list[Path] = field(default_factory=list)

    @property
    def date(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified))


class Library:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    # -- reading -------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every readable entry, newest first (unreadable files are skipped: they are not ours)."""
        out = []
        for p in self.folder.iterdir():
            if p.name.startswith("."):
                continue
            if not ((p.is_file() and p.name.endswith(FILE_EXT)) or (p.is_dir() and (p / FOLDER_META).is_file())):
                continue
            try:
                entry = self._entry(p)
            except (ValueError, OSError, KeyError):
                continue
            if entry.method != "?":  # resume states and other files without a method are not entries
                out.append(entry)
        return sorted(out, key=lambda e: -e.modified)

    def _entry(self, path: Path) -> Entry:
        meta = read_metadata(path)
        name = path.name[: -len(FILE_EXT)] if path.is_file() else path.name
        return Entry(name, path, meta.get("method", "?"), meta.get("class_phrase", ""), meta.get("base_model", ""),
                     meta.get("base_fingerprint", ""), meta.get("family", ""), storage_bytes(path),
                     path.stat().st_mtime, self._images(name, meta))

    def _images(self, name: str, meta: dict) -> list[Path]:
        """The entry's training images: its copy in ``.images/<name>``, else the folder its metadata names."""

        folder = self.images_dir(name)
        if not folder.is_dir():
            try:
                folder = Path(json.loads(meta.get("training") or "{}").get("images") or "")
            except (ValueError, TypeError):
                return []
        if not str(folder) or not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def get(self, name: str) -> Entry:
        name = check_name(name)
        for p in (self.folder / f"{name}{FILE_EXT}", self.folder / name):
            if p.exists():
                return self._entry(p)
        raise ValueError(f"no library entry named {name!r}")

    def exists(self, name: str) -> bool:
        return (self.folder / f"{name}{FILE_EXT}").exists() or (self.folder / name).exists()

    def images_dir(self, name: str) -> Path:
        return self.folder / IMAGES / name

    def output_path(self, name: str, method: str, root: Path | None = None) -> Path:
        """Where ``method``'s output for ``name`` goes (in ``root``, default the library)."""
        root = root or self.folder
        return get_spec(method).output_path(root, name)

    # -- writing -------------------------------------------------------------------------------
    def staging(self, job: str) -> Path:
        """A fresh folder inside the library for a job's outputs (same file system: moves are atomic)."""
        path = self.folder / STAGING / job
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def add(self, staged: Path, name: str) -> Entry:
        """Move a finished output in; refuses to replace an existing entry."""
        name = check_name(name)
        if self.exists(name):
            raise ValueError(f"the library already has an entry named {name!r}: rename or delete it first")
        dest = self.folder / (staged.name if staged.is_file() else name)
        os.replace(staged, dest)
        return self._entry(dest)

    def rename(self, name: str, new: str) -> Entry:
        """Rename an entry and the concept inside it (its ``<name>`` in prompts), atomically."""
        entry, new = self.get(name), check_name(new)
        if new == entry.name:
            return entry
        if self.exists(new):
            raise ValueError(f"the library already has an entry named {new!r}")
        if entry.path.is_file():
            from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic

            tensors, meta = read_safetensors(entry.path, "library entry")
            meta = {**meta, "name": new}
            tensors = {(f"<{new}>" if k == f"<{name}>" else k): v for k, v in tensors.items()}  # a TI file's key
            save_safetensors_atomic(tensors, self.folder / f"{new}{FILE_EXT}", meta)
            entry.path.unlink()
        else:
            meta = json.loads((entry.path / FOLDER_META).read_text())
            meta["name"] = new
            tmp = entry.path / (FOLDER_META + ".tmp")
            tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
            os.replace(tmp, entry.path / FOLDER_META)
            os.replace(entry.path, self.folder / new)
        if self.images_dir(name).is_dir():
            os.replace(self.images_dir(name), self.images_dir(new))
        return self.get(new)

    def delete(self, name: str) -> None:
        entry = self.get(name)
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink()
        shutil.rmtree(self.images_dir(entry.name), ignore_errors=True)
