"""Saving images people look at: PNGs that carry their generation parameters, and labelled grids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
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
    """Images in a table, optional column headers (wrapped within their column) and row captions (left, wrapped).
    Cells are resized to ``cell`` px (default: the first image's width, at least 64 so labels fit)."""
    if not rows or not rows[0]:
        raise ValueError("make_grid needs at least one image")
    cell = cell or max(64, rows[0][0].width)
    font = PIL.ImageFont.load_default(size=LABEL_SIZE)
    lw = label_width or (min(260, int(max(font.getlength(s) for s in row_labels)) + 12) if row_labels else 0)
    hfont = _header_font(col_labels or [], cell - 4)
    hline = hfont.size + 2
    heads = [_lines(hfont, s, cell - 4) for s in col_labels or []]
    head = (max(len(h) for h in heads) * hline + 4) if heads else 0
    n_cols = max(len(r) for r in rows)
    grid = PIL.Image.new("RGB", (lw + n_cols * cell, head + len(rows) * cell), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for j, lines in enumerate(heads):
        _draw_lines(draw, hfont, lines, (lw + j * cell + 2, 1), hline)
    for i, row in enumerate(rows):
        if row_labels:
            _draw_lines(draw, font, _lines(font, row_labels[i], lw - 8), (4, head + i * cell + 2))
        for j, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((cell, cell), PIL.Image.Resampling.NEAREST), (lw + j * cell, head + i * cell))
    return grid


LABEL_SIZE, LINE, WORD_GAP = 11, 13, 4  # px: a label's font size, line height, the space drawn between words


def _header_font(labels: list[str], width: int):
    """The largest label font, down to 9 px (smaller is hard to read), at which every header's words, broken only
    after ``-``, ``+`` or ``_``, fit ``width`` ("recommended" in a 72 px column: 9 px, not "recommen" | "ded")."""
    for size in range(LABEL_SIZE, 8, -1):
        font = PIL.ImageFont.load_default(size=size)
        if all(font.getlength(p) <= width for s in labels for w in s.split() for p in re.split(r"(?<=[-+_])", w) if p):
            return font
    return font


def _pieces(font, word: str, width: int) -> list[str]:
    """``word`` in pieces of at most ``width`` px: broken after ``-``, ``+`` or ``_`` (``custom-`` | ``diffusion+`` |
    ``mlm``), a piece still too wide broken between characters; a word that fits is one piece."""
    if font.getlength(word) <= width:
        return [word]
    parts = [p for p in re.split(r"(?<=[-+_])", word) if p]
    out = []
    for part in parts:
        if out and font.getlength(out[-1] + part) <= width:  # join parts that fit together
            out[-1] += part
            continue
        while font.getlength(part) > width and len(part) > 1:
            k = max(1, max(i for i in range(1, len(part) + 1) if font.getlength(part[:i]) <= width or i == 1))
            out.append(part[:k])
            part = part[k:]
        out.append(part)
    return out


def _lines(font, text: str, width: int) -> list[list[str]]:
    """``text`` as lines of words, each line at most ``width`` px (a longer word is broken: ``_pieces``)."""
    lines, line, used = [], [], 0.0
    for word in (piece for w in text.split() for piece in _pieces(font, w, width)):
        w = font.getlength(word)
        if line and used + WORD_GAP + w > width:
            lines.append(line)
            line, used = [], 0.0
        used += (WORD_GAP if line else 0) + w
        line.append(word)
    return lines + [line] if line else lines


def _draw_lines(draw, font, lines: list[list[str]], xy, line: int = LINE) -> None:
    """Draw word by word with a fixed gap: the default font's own space is too narrow to read ("a photoof a")."""
    for k, words in enumerate(lines):
        x = xy[0]
        for word in words:
            draw.text((x, xy[1] + line * k), word, fill="black", font=font)
            x += font.getlength(word) + WORD_GAP