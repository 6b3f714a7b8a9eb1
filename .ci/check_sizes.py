#!/usr/bin/env python3
"""Fail on a tracked file that would make every clone heavier: over 1 MB outside the allow-list (the built-in
world's weights, probes, contextualizer, tokenizer files), or a PNG over 300 KB. Usage: check_sizes.py [REPO]."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

MAX_BYTES = 1024 * 1024
MAX_PNG_BYTES = 300 * 1024
ALLOWED = (  # shipped weights: they change only when an issue asks
    "src/infusion/world/model/*/*.safetensors",
    "src/infusion/world/model/tokenizer/*",
    "src/infusion/world/probes.safetensors",
    "src/infusion/world/contextualizer.safetensors",
    "src/infusion/data/clip-tokenizer/*",
)


def too_big(repo: Path) -> list[str]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout.split(b"\0")
    out = []
    for name in (f.decode() for f in files if f):
        path = repo / name
        if not path.is_file():
            continue
        size = path.stat().st_size
        if name.lower().endswith(".png") and size > MAX_PNG_BYTES:
            out.append(f"{name}: {size / 1024:.0f} KB (a PNG may be at most {MAX_PNG_BYTES // 1024} KB)")
        elif size > MAX_BYTES and not any(fnmatch.fnmatch(name, pat) for pat in ALLOWED):
            out.append(f"{name}: {size / 2**20:.1f} MB (at most 1 MB outside the allow-list in .ci/check_sizes.py)")
    return out


def main(argv: list[str]) -> int:
    repo = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent.parent)
    bad = too_big(repo)
    for line in bad:
        print(f"check_sizes: {line}", file=sys.stderr)
    if not bad:
        print("check_sizes: no tracked file over the limits")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
