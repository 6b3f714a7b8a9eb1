"""Append-only JSON-lines record files: the harness's memory between runs.

Each process appends to its own ``<dir>/rank<k>.jsonl`` (no two writers share a file); a record is
written only after the image it describes is on disk, so every record found points to a finished
image. Reading merges all ranks and ignores a truncated last line (a crash mid-write).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class RecordStore:
    def __init__(self, folder: str | os.PathLike, rank: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"rank{rank}.jsonl"

    def read(self) -> dict[str, dict]:
        """All records of all ranks by ``key`` (later records win)."""
        out: dict[str, dict] = {}
        for f in sorted(self.folder.glob("rank*.jsonl")):
            for line in f.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupted run; its job is redone
                if isinstance(rec, dict) and "key" in rec:
                    out[rec["key"]] = rec
        return out

    def append(self, records: list[dict]) -> None:
        torn = False
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # an interrupted write left half a line
        with open(self.path, "a") as f:
            if torn:
                f.write("\n")
            for rec in records:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
