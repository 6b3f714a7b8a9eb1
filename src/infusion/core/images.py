"""Saving images people look at: PNGs that carry their generation parameters, and labelled grids."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.PngImagePlugin


def save_png(image: PIL.Image.Image, path: str | Path, params: dict) -> Path:
    """Write ``image`` with ``params`` in text chunks: ``parameters`` (readable line) and
    ``infusion`` (JSON), so a PNG says how it was made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("parameters", ", ".join(f"{k}: {v}" for k, v in params.items()))
    info.add_text("infusion", json.dumps(params, default=str))
    image.save(path, pnginfo=info)
    return path


def read_png_params(path: str | Path) -> dict:
    """The JSON parameters written by ``save_png``."""
    with PIL.Image.open(path) as im:
        return json.loads(im.text["infusion"])


def make_grid(rows: list[list[PIL.Image.Image]], col_labels: list[str] | None = None,
              row_labels: list[str] | None = None, cell: int | None = None, label_width: int = 0) -> PIL.Image.Image:
    """Images in a table, optional column headers and row captions (left). Cells are resized to
    ``cell`` px (default: the first image's width, at least 64 so labels fit)."""
    if not rows or not rows[0]:
        raise ValueError("make_grid needs at least one image")
    cell = cell or max(64, rows[0][0].width)
    head = 14 if col_labels else 0
    lw = label_width or (min(260, 6 * max(len(s) for s in row_labels) + 8) if row_labels else 0)
    n_cols = max(len(r) for r in rows)
    grid = PIL.Image.new("RGB", (lw + n_cols * cell, head + len(rows) * cell), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for j, text in enumerate(col_labels or []):
        draw.text((lw + j * cell + 2, 1), text, fill="black")
    for i, row in enumerate(rows):
        if row_labels:
            _wrap_text(draw, row_labels[i], (2, head + i * cell + 2), lw - 4)
        for j, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((cell, cell), PIL.Image.Resampling.NEAREST), (lw + j * cell, head + i * cell))
    return grid


def _wrap_text(draw, text: str, xy, width: int) -> None:
    chars = max(8, width // 6)
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) + 1 > chars and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for k, ln in enumerate(lines):
        draw.text((xy[0], xy[1] + 11 * k), ln, fill="black")
