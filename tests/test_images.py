"""Grid pictures (``core.images.make_grid``): labels stay inside their column and words keep their gaps."""

import numpy as np
import PIL.Image
import PIL.ImageFont

from infusion.core.images import LABEL_SIZE, WORD_GAP, _lines, make_grid

NAMES = ["base model", "custom-diffusion+mlm", "dreambooth+mlm", "infusion-recommended", "Infusion (paper)", "lora"]


def _width(font, line):
    return sum(font.getlength(w) for w in line) + WORD_GAP * (len(line) - 1)


def test_long_names_break_at_hyphens_and_plus_and_fit_their_column():
    font = PIL.ImageFont.load_default(size=LABEL_SIZE)
    for name in NAMES + ["a" * 40]:
        lines = _lines(font, name, 60)
        assert all(_width(font, line) <= 60 for line in lines), (name, lines)
        assert "".join(w for line in lines for w in line) == name.replace(" ", "")  # nothing lost or added
    assert _lines(font, "custom-diffusion+mlm", 60)[0][0] == "custom-"  # broken after the hyphen
    assert _lines(font, "lora", 60) == [["lora"]]


def test_each_column_header_is_drawn_inside_its_own_column():
    cell = 64
    image = PIL.Image.new("RGB", (32, 32), "white")
    for j, name in enumerate(NAMES):
        labels = ["" if k != j else name for k in range(len(NAMES))]
        grid = np.asarray(make_grid([[image] * len(NAMES)], labels, cell=cell).convert("L"))
        head = grid[: grid.shape[0] - cell]  # the header band above the one row of cells
        cols = np.nonzero((head < 128).any(axis=0))[0]
        assert len(cols) and cols.min() >= j * cell and cols.max() < (j + 1) * cell, (name, cols.min(), cols.max())


def test_headers_shrink_their_font_before_breaking_a_word_between_letters():
    from infusion.core.images import _header_font

    assert _header_font(["lora", "ti"], 60).size == LABEL_SIZE  # everything fits at the label size
    small = _header_font(["dreambooth", "custom-diffusion+mlm", "infusion-recommended"], 68)  # Fig. 7's 72 px column
    assert small.size < LABEL_SIZE and small.getlength("recommended") <= 68
    assert PIL.ImageFont.load_default(size=small.size + 1).getlength("recommended") > 68  # the largest that fits
    assert _lines(small, "infusion-recommended", 68) == [["infusion-"], ["recommended"]]  # no word cut
    assert _header_font(["a" * 40], 60).size == 9  # never below 9 px: a word that long is cut between letters
