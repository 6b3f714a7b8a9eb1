"""The concept library: a folder of what ``infusion train`` writes, one entry per concept, as the web page shows it.

Layout: ``<library>/<name>.safetensors`` (Infusion, TI, P+, LoRA, Perfusion) or ``<library>/<name>/``
(DreamBooth, Custom Diffusion: folders with ``infusion.json``); the training images beside it in
``<library>/.images/<name>/``. Names are concept names (``concept.NAME_PATTERN``, at most 64 characters), so no
name can leave the folder. Every change is atomic or refused before it starts: a new entry is moved in
(``os.replace``) from a staging folder inside the library once complete; a rename checks every destination first,
then moves the entry in one rename (a file: the renamed copy is written before the old one goes); a delete moves
the entry out of sight (``.trash``) in one rename before removing it.

Working folders, all inside the library (one file system, so moves are atomic) and all removed when done:
``.staging/<job>`` (a training job's outputs, removed when the job ends), ``.outputs/<session>/<unique>`` (a page
session's generated PNGs and downloads, removed when the session ends), ``.trash`` (deletes in progress).
``clean_leftovers`` removes what a killed server left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from infusion.core.customization_files import FILE_EXT, FOLDER_META, read_metadata, storage_bytes
from infusion.core.placeholders import NAME_PATTERN
from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic
from infusion.methods.registry import get_spec
from infusion.training.data import IMAGE_SUFFIXES

STUDIES = "studies"  # <library>/studies/<study>/: the page's A/B studies (app.study); not a name for an entry
IMAGES = ".images"
STAGING = ".staging"
OUTPUTS = ".outputs"
TRASH = ".trash"
MAX_NAME = 64
LEFTOVER_AGE = 24 * 3600  # s: working folders older than this are a killed server's (clean_leftovers)


def check_name(name: str) -> str:
    """``name`` stripped, or ``ValueError`` saying why it cannot be a library entry (and a ``<name>`` in prompts)."""
    name = (name or "").strip()
    if not name:
        raise ValueError("give the concept a name (letters, digits, _ - .), e.g. mycat")
    if "/" in name or "\\" in name or name.startswith(".") or ".." in name:
        raise ValueError(f"name {name!r} is refused: names cannot contain slashes or '..', nor start with '.'")
    if name.endswith(FILE_EXT):  # "x.safetensors" would find the entry x (its file)
        raise ValueError(f"name {name!r} is refused: a name cannot end in {FILE_EXT}")
    if name == STUDIES:
        raise ValueError(f"name {name!r} is refused: the library keeps its studies in a folder of that name")
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
    concept: str = ""  # the name the file's metadata gives its concept ("" = the entry's name)

    @property
    def date(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified))

    def in_prompt(self, text: str) -> str:
        """``text`` as the loaded file reads it (``in_prompt``, this entry alone)."""
        return in_prompt([self], text)


def in_prompt(entries: list[Entry], text: str) -> str:
    """``text`` as the loaded files read it: the page names a concept by its entry (``<cat>`` for ``cat.safetensors``),
    a file by its metadata's name, which a command-line run may have set apart (``--name mycat --out cat...``). One
    pass over the placeholders, so one entry's new name is never renamed again by another's."""
    names = {e.name: e.concept for e in entries if e.concept and e.concept != e.name}
    if not names:
        return text
    return re.sub(r"<([^<>]+)>", lambda m: f"<{names.get(m[1], m[1])}>", text)


class Library:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # edits (add, rename, delete) one at a time: checks stay true until done
        self._reserved: set[str] = set()  # names of running training jobs: no entry may take them meanwhile

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` as the page shows it: relative to the library folder (never the file system's path)."""
        try:
            return Path(path).resolve().relative_to(self.folder).as_posix()
        except ValueError:
            return Path(path).name

    def scrub(self, text: str) -> str:
        """A message for the page with the library's file system path replaced by ``library``."""
        return str(text).replace(str(self.folder), "library")

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
                     path.stat().st_mtime, self._images(name, meta), meta.get("name", ""))

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

    def remove_images(self, name: str) -> None:
        """Remove the library's copy of ``name``'s training images (a job that added nothing)."""
        _remove(self.images_dir(name))
        _remove_if_empty(self.folder / IMAGES)

    def output_path(self, name: str, method: str, root: Path | None = None) -> Path:
        """Where ``method``'s output for ``name`` goes (in ``root``, default the library)."""
        root = root or self.folder
        return get_spec(method).output_path(root, name)

    # -- working folders -----------------------------------------------------------------------
    def staging(self, job: str) -> Path:
        """A fresh folder inside the library for a job's outputs (same file system: moves are atomic)."""
        path = self.folder / STAGING / _folder_name(job)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def end_staging(self, job: str) -> None:
        """Remove a job's staging folder and whatever it still holds (checkpoints, resume state, class prior)."""
        _remove(self.folder / STAGING / _folder_name(job))
        _remove_if_empty(self.folder / STAGING)

    def output_folder(self, session: str | None = None) -> Path:
        """A new folder, never used before, for one generation or download of a page session."""
        path = self.folder / OUTPUTS / _folder_name(session or "local") / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def downloads_folder(self, session: str | None = None) -> Path:
        """The page session's folder of downloads (reused while the session lasts; removed with its outputs)."""
        path = self.folder / OUTPUTS / _folder_name(session or "local") / "downloads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def end_outputs(self, session: str | None = None) -> None:
        """Remove a page session's generated files (when the session ends)."""
        _remove(self.folder / OUTPUTS / _folder_name(session or "local"))
        _remove_if_empty(self.folder / OUTPUTS)

    def clean_leftovers(self, age: float = LEFTOVER_AGE) -> list[str]:
        """Remove working folders older than ``age`` seconds (staging of jobs and outputs of sessions that a killed
        server never ended; deletes it never finished; the images a killed job copied, of no entry). -> what was removed, library-relative."""
        removed = []
        for kind in (STAGING, OUTPUTS, TRASH, IMAGES):
            folder = self.folder / kind
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if kind == IMAGES and (self.exists(p.name) or p.name in self._reserved):
                    continue  # an entry's images, or a running job's: only a killed job's copy is a leftover
                if kind == TRASH or time.time() - p.stat().st_mtime > age:
                    removed.append(self.relative(p))
                    _remove(p)
            _remove_if_empty(folder)
        return removed

    # -- writing -------------------------------------------------------------------------------
    def reserve(self, name: str) -> None:
        """Hold ``name`` for a training job (its images go to ``.images/<name>`` now, its entry when it ends):
        until ``release``, adding or renaming another entry to it is refused. Refused if taken or held."""
        name = check_name(name)
        with self._lock:
            self._refuse_taken(name)
            self._reserved.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._reserved.discard(name)

    def add(self, staged: Path, name: str) -> Entry:
        """Move a finished output in; refuses to replace an existing entry (the job holding ``name`` may add it)."""
        name = check_name(name)
        with self._lock:
            self._refuse_taken(name, holder=True)
            dest = self.folder / (staged.name if staged.is_file() else name)
            os.replace(staged, dest)
            return self._entry(dest)

    def _refuse_taken(self, name: str, holder: bool = False) -> None:
        """``holder``: the caller is the job that reserved ``name``."""
        if name in self._reserved and not holder:
            raise ValueError(f"a training job is making <{name}>: pick another name, or wait until it is done")
        for p in (self.folder / f"{name}{FILE_EXT}", self.folder / name):
            if p.exists():
                what = "an entry" if self._is_entry(p) else "a file or folder that is not an entry"
                raise ValueError(f"the library already has {what} named {p.name!r}: rename or delete it first")

    def _is_entry(self, p: Path) -> bool:
        try:
            return self._entry(p).method != "?"
        except (ValueError, OSError, KeyError):
            return False

    def rename(self, name: str, new: str) -> Entry:
        """Rename an entry and the concept inside it (its ``<name>`` in prompts). Every destination is checked before
        anything moves; the entry then moves in one rename (a file: its renamed copy is written, then the old one
        removed; a folder: renamed, then its metadata rewritten, renamed back if that fails); its images follow."""
        entry, new = self.get(name), check_name(new)
        if new == entry.name:
            return entry
        with self._lock:
            self._refuse_taken(new)
            old_images, new_images = self.images_dir(entry.name), self.images_dir(new)
            if new_images.exists():  # images of no entry and no running job (the name is free): a leftover
                self._discard(new_images)
            dest = self.folder / (f"{new}{FILE_EXT}" if entry.path.is_file() else new)
            if entry.path.is_file():
                tensors, meta = read_safetensors(entry.path, "library entry")
                meta = {**meta, "name": new}
                tensors = {(f"<{new}>" if k == f"<{entry.name}>" else k): v for k, v in tensors.items()}  # a TI key
                save_safetensors_atomic(tensors, dest, meta)
                undo = dest.unlink
            else:
                meta = json.loads((entry.path / FOLDER_META).read_text())
                os.rename(entry.path, dest)
                undo = lambda: os.rename(dest, entry.path)  # noqa: E731
                try:
                    tmp = dest / (FOLDER_META + ".tmp")
                    tmp.write_text(json.dumps({**meta, "name": new}, indent=1, sort_keys=True))
                    os.replace(tmp, dest / FOLDER_META)
                except OSError:
                    undo()
                    raise
            try:
                if old_images.is_dir():
                    os.rename(old_images, new_images)
            except OSError:
                undo()
                raise
            if entry.path.is_file():
                entry.path.unlink()
        return self.get(new)

    def delete(self, name: str) -> None:
        """Remove an entry and its images: each leaves the library in one rename (to ``.trash``), then is removed."""
        with self._lock:
            entry = self.get(name)
            self._discard(entry.path)
            if self.images_dir(entry.name).exists():
                self._discard(self.images_dir(entry.name))
        _remove_if_empty(self.folder / TRASH)
        _remove_if_empty(self.folder / IMAGES)

    def _discard(self, path: Path) -> None:
        trash = self.folder / TRASH / uuid.uuid4().hex
        trash.parent.mkdir(exist_ok=True)
        os.rename(path, trash)
        _remove(trash)


def _folder_name(key: str) -> str:
    """A job id or page session id as one folder name (letters, digits, _ -; anything else hashed)."""
    if re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", key):
        return key
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (another job or session), or gone
        pass
