"""Table 1, Table 2 and Fig. 7 from per-image records (evaluation.world_tables), on small hand-made record sets:
scene kept against the base model's image on the same noise, open prompts, W2 (not squared) from pooled latents,
the Table 2 rule, and a Fig. 7 grid that refuses a missing row."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from infusion.evaluation import world_tables as wt
from infusion.evaluation.world_results import png_b64

PROMPTS = ["a photo of a <sunball> on the snow", "a <sunball> in the top left corner", "a photo of a <sunball>"]


def lines(row, setting, pooled_shift=0.0, background="snow", objects=(("center", "ball"),), text=1.0, fid=0.5,
          look=False, image=None, concept="sunball"):
    rng = np.random.default_rng(0)  # the same "noise" in every row: pooled latents differ only by the shift
    out = []
    for p in PROMPTS:
        for seed in (0, 1):
            line = {"row": row, "concept": concept, "setting": setting, "prompt": p, "seed": seed,
                    "text_fidelity": text, "concept_fidelity": fid, "look": look, "background": background,
                    "objects": [list(o) for o in objects], "pooled": list(rng.normal(size=16) + pooled_shift)}
            if image is not None and seed == 0:
                line["image"] = png_b64(image)
            out.append(line)
    return out


def test_open_prompts_name_no_background_and_no_position():
    assert [wt.open_prompt(p, "sunball") for p in PROMPTS] == [False, False, True]


def test_scene_kept_needs_the_same_background_and_the_same_objects_at_the_same_slots():
    base = {"background": "snow", "objects": [["center", "ball"]]}
    assert wt.scene_kept({"background": "snow", "objects": [["center", "ball"]]}, base)
    assert not wt.scene_kept({"background": "sand", "objects": [["center", "ball"]]}, base)
    assert not wt.scene_kept({"background": "snow", "objects": [["top left", "ball"]]}, base)
    assert not wt.scene_kept({"background": "snow", "objects": [["center", "ball"], ["top left", "ball"]]}, base)


def test_table1_w2_is_zero_on_the_base_latents_and_the_shift_on_shifted_ones():
    images = {("base", "sunball", "base"): lines("base", "base"),
              ("a", "sunball", "default"): lines("a", "default"),  # the base model's latents exactly
              ("a", "sunball", "tuned"): lines("a", "tuned", pooled_shift=0.5, background="sand")}
    rows = wt.table1(images, {"test/a/sunball/tuned": {"lfd_per_latent": [0.1, 0.3], "file_bytes": 2048}},
                     ["a"], ["sunball"])
    got = {(t.row, t.setting): t for t in rows}
    assert got[("a", "default")].cells["w2"][0] == pytest.approx(0.0, abs=1e-6)
    # W2 between two Gaussians with the same covariance is the distance of the means: 0.5 in each of 16 dims = 2.0
    assert got[("a", "tuned")].cells["w2"][0] == pytest.approx(2.0, abs=1e-6)
    assert got[("a", "default")].cells["scene_kept"][0] == 1.0
    assert got[("a", "tuned")].cells["scene_kept"][0] == 0.0 and got[("a", "tuned")].cells["scene_kept_open"][0] == 0.0
    assert got[("a", "tuned")].cells["lfd"][0] == pytest.approx(0.2) and got[("a", "tuned")].file_bytes == 2048
    assert math.isnan(got[("a", "default")].cells["lfd"][0])  # no LFD record: said, not invented
    assert got[("base", "base")].cells["lfd"] == (0.0, 0.0, 0.0)


def test_table1_mean_is_over_concepts_then_prompts_with_seeds_together():
    a = lines("a", "tuned", look=True)
    for x in a:  # prompt 0: both seeds miss; prompts 1, 2: both hit -> 2/3 on sunball
        x["look"] = x["prompt"] != PROMPTS[0]
    b = lines("a", "tuned", look=False, concept="slashbox")
    for x in b:
        x["prompt"] = x["prompt"].replace("sunball", "slashbox")
    base_b = lines("base", "base", concept="slashbox")
    for x in base_b:
        x["prompt"] = x["prompt"].replace("sunball", "slashbox")
    images = {("base", "sunball", "base"): lines("base", "base"), ("base", "slashbox", "base"): base_b,
              ("a", "sunball", "tuned"): a, ("a", "slashbox", "tuned"): b}
    (t,) = [r for r in wt.table1(images, {}, ["a"], ["sunball", "slashbox"]) if r.row == "a"]
    est, lo, hi = t.cells["look_rate"]
    assert est == pytest.approx((2 / 3 + 0) / 2) and lo <= est <= hi


def test_table2_counts_wins_and_ties_by_the_rule():
    a, b = lines("infusion", "tuned", text=1.0, fid=0.5), lines("ti", "tuned", text=0.5, fid=0.5)
    prefs = wt.table2({("infusion", "sunball", "tuned"): a, ("ti", "sunball", "tuned"): b}, ["infusion"], ["ti"], ["sunball"])
    assert prefs[("infusion", "ti", "text")].share == 1.0  # higher text fidelity on every image
    assert prefs[("infusion", "ti", "image")].share == 0.5  # equal concept fidelity: a tie, half each
    assert prefs[("infusion", "ti", "text")].pairs == 6
    assert wt.table2({("infusion", "sunball", "tuned"): a}, ["infusion"], ["ti"], ["sunball"]) == {}


def test_fig7_draws_every_row_and_refuses_a_missing_one():
    im = Image.new("RGB", (64, 64), "red")
    images = {("base", "sunball", "base"): lines("base", "base", image=im),
              ("a", "sunball", "tuned"): lines("a", "tuned", image=im)}
    refs = [Image.new("RGB", (64, 64), "blue")] * 4
    grid = wt.fig7(images, "sunball", ["a"], refs)
    assert grid.height >= 64 * (len(PROMPTS) + 1) and grid.width >= 64 * 2
    with pytest.raises(wt.MissingRows, match="no pictures for b"):
        wt.fig7(images, "sunball", ["a", "b"], refs)


def test_fmt_cell():
    assert wt.fmt_cell((0.5, 0.4, 0.6), "{:.2f}") == "0.50 [0.40, 0.60]"
    assert wt.fmt_cell((0.0, 0.0, 0.0), "{:.2f}") == "0.00"
    assert wt.fmt_cell((math.nan, math.nan, math.nan), "{:.2f}") == "-"


def test_the_page_says_where_the_text_fidelity_floor_decided_a_tuned_choice():
    """The protocol's floor can choose a point that learned nothing over one that learned the look at a little text
    fidelity: the page lists each such choice with both points' validation scores; a choice that was the best
    point anyway is not listed."""
    from infusion.evaluation.world_page import readings_floor

    def val(look, text):
        return {"look_rate": look, "text_fidelity": text, "concept_fidelity": 0.5, "selection_score": look + text + 0.05}

    summaries = {
        "val/base/c": val(0.0, 1.0),
        "choice/lora/c": {"lr": 1e-4, "steps": 500, "floor_met": True},
        "val/lora/c/lr0.0001-step500": val(0.0, 1.0),
        "val/lora/c/lr0.001-step500": val(1.0, 0.967),
        "choice/ti/c": {"lr": 0.02, "steps": 250, "floor_met": True},
        "val/ti/c/lr0.02-step250": val(0.9, 0.99),
        "val/ti/c/lr0.002-step250": val(0.0, 1.0),
    }
    lines = readings_floor(summaries, ["lora", "ti"], ["c"], 0.02)
    assert len(lines) == 2 and "minus a margin of 0.02" in lines[0]
    assert lines[1] == ("  - lora on c: chose lr 0.0001, 500 steps (look 0.00, text 1.000); the floor (0.980) excluded "
                        "lr 0.001, 500 steps (look 1.00, text 0.967)")
    summaries["choice/lora/c"] = {"lr": 1e-3, "steps": 500, "floor_met": True}  # the best point chosen: nothing to say
    assert readings_floor(summaries, ["lora", "ti"], ["c"], 0.02) == []
    summaries["choice/ti/c"] = {"lr": 0.02, "steps": 250, "floor_met": False}  # no point met it: said, as the protocol
    assert readings_floor(summaries, ["lora", "ti"], ["c"], 0.02)[1] == (
        "  - ti on c: chose lr 0.02, 250 steps (look 0.90, text 0.990) (no point met the floor: the one with the highest "
        "text fidelity)")
    summaries["choice/ti/c"] = {"lr": 0.002, "steps": 250, "floor_met": False}  # a better point, but none met it:
    assert readings_floor(summaries, ["lora", "ti"], ["c"], 0.02)[1].endswith("the highest text fidelity)")  # no "excluded"


def test_table1_readings_call_a_difference_only_where_intervals_are_apart():
    from infusion.evaluation.world_page import readings_table1
    from infusion.evaluation.world_tables import TableRow

    def row(name, setting, text, look):
        cells = {k: (0.5, 0.4, 0.6) for k in ("concept_fidelity", "scene_kept", "scene_kept_open", "w2", "lfd")}
        return TableRow(name, setting, ["c"], {**cells, "text_fidelity": text, "look_rate": look}, 0)

    rows = [row("base", "base", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
            row("infusion", "tuned", (0.98, 0.96, 0.99), (0.2, 0.1, 0.3)),
            row("lora", "default", (0.99, 0.98, 1.0), (0.9, 0.8, 1.0)), row("lora", "tuned", (0.99, 0.98, 1.0), (0.9, 0.8, 1.0)),
            row("pplus", "tuned", (0.90, 0.85, 0.95), (0.5, 0.4, 0.6))]
    text = "\n".join(readings_table1(rows))
    assert "highest lora 0.990 [0.980, 1.000]; below it with intervals apart: pplus 0.900." in text
    assert "its text fidelity is within the intervals of the best rows, and its look rate 0.20 is below lora's 0.90" in text
    assert "Tuned equals default (the sweep chose the default's point on every concept): lora." in text


def test_fig7_reading_reads_the_scene_kept_column():
    from infusion.evaluation.world_page import reading_fig7
    from infusion.evaluation.world_tables import TableRow

    def row(name, kept, kept_open):
        return TableRow(name, "tuned", ["c"], {"scene_kept": (kept, 0, 1), "scene_kept_open": (kept_open, 0, 1)})

    text = reading_fig7([row("infusion", 0.84, 0.0), row("infusion-recommended", 0.94, 0.5), row("ti", 0.7, 0.5),
                         row("lora", 0.87, 0.0)])[0]
    assert "**Infusion (paper)** 0.84, infusion-recommended 0.94, the other rows 0.70-0.87;" in text
    assert "**Infusion (paper)** keeps it in 0.00 of the images" in text
    assert reading_fig7([row("ti", 0.7, 0.5)]) == []


def test_fig11_reading_ranks_rows_by_their_loss_of_text_fidelity():
    from infusion.evaluation.world_figures import FIGURE_PLANS
    from infusion.evaluation.world_page import reading_fig11

    plan = FIGURE_PLANS["full"]
    first, last = plan.fig11_steps[0], plan.fig11_steps[-1]

    def rec(t0, t1, k1):
        return {first: {"text_fidelity": [1.0, t0 * 2 - 1.0], "look": [False, False]},
                last: {"text_fidelity": [t1, t1], "look": [k1, False]}}

    lines = {("infusion", "c"): rec(1.0, 0.9, False), ("lora", "c"): rec(1.0, 0.95, True), ("ti", "c"): rec(0.9, 0.6, False)}
    text = "\n".join(reading_fig11(lines, plan, ["c"], ["infusion", "lora", "ti", "pplus"]))
    assert text.index("- ti: text fidelity 0.900 -> 0.600") < text.index("- **Infusion (paper)**: text fidelity 1.000 -> 0.900")
    assert "- lora: text fidelity 1.000 -> 0.950; look 0.00 -> 0.50" in text
    assert "pplus" not in text  # no records at both steps: not read
    assert "**Infusion (paper)** loses 0.100 of text fidelity by step 2000; lora loses less" in text
    assert reading_fig11({}, plan, ["c"], ["infusion"]) == []


def test_curve_readings_say_where_the_paper_infusion_w2_rises(tmp_path):
    """W2 of a row whose latents move away from the base model's with steps: the reading gives both ends and its
    place at the last step; LFD all 0 is called by construction."""
    from infusion.evaluation.world_figures import FigurePlan, Row
    from infusion.evaluation.world_page import curve_lines

    plan = FigurePlan(concepts=("c",), rows=(Row("infusion", "infusion", {}), Row("lora", "lora", {})), steps=(1, 2))
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 16))
    (tmp_path / "base__c.json").write_text(json.dumps({"pooled": base.tolist()}))

    def write(row, shifts, lfd):
        lines = [{"step": s, "pooled": (base + d).tolist(), "lfd": [lfd] * 4} for s, d in zip(plan.steps, shifts)]
        (tmp_path / f"{row}__c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    write("infusion", (0.1, 0.5), 0.0)
    write("lora", (0.05, 0.2), 0.3)
    concepts, rows, out = curve_lines(tmp_path, plan, seeds=2)
    text = "\n".join(out)
    assert concepts == ["c"] and rows == ["infusion", "lora"]
    assert "- **Infusion (paper)**: W2 0.40 at step 1 -> 2.00 at 2; LFD exactly 0 at every step." in text
    assert "At step 2, W2 lowest first: lora 0.80, **Infusion (paper)** 2.00" in text
    assert "here its W2 goes from 0.40 [" in text and "to 2.00 [" in text
    write("infusion", (0.1, 0.1), 0.0)
    assert "Where the world differs" not in "\n".join(curve_lines(tmp_path, plan, seeds=2)[2])


def test_table2_readings_say_where_the_paper_form_is_not_preferred_over_every_baseline():
    from infusion.evaluation.preference import Preference
    from infusion.evaluation.world_page import readings_table2, table2_lines

    def p(share, low, high):
        return Preference(share, low, high, 100, 50)

    prefs = {("infusion", "ti", "text"): p(0.6, 0.55, 0.65), ("infusion", "ti", "image"): p(0.7, 0.6, 0.8),
             ("infusion", "perfusion", "text"): p(0.52, 0.5, 0.54), ("infusion", "perfusion", "image"): p(0.44, 0.39, 0.499),
             ("infusion-recommended", "ti", "text"): p(0.6, 0.55, 0.65), ("infusion-recommended", "ti", "image"): p(0.9, 0.85, 0.95),
             ("infusion-recommended", "perfusion", "text"): p(0.6, 0.51, 0.65),
             ("infusion-recommended", "perfusion", "image"): p(0.6, 0.55, 0.65)}
    text = "\n".join(readings_table2(prefs))
    # a lower bound of exactly 0.5 is not above one half
    assert "- **Infusion (paper)**: text alignment: preferred over 1 of 2 baselines (ti); image alignment: preferred " \
           "over 1 of 2 baselines (ti), less preferred than perfusion" in text
    assert ("**Where the world differs from the paper**: there, Infusion is preferred over each baseline in both text and "
            "image alignment; here **Infusion (paper)** is preferred over 1 of 2 (text); and over 1 of 2 (image), less "
            "preferred than perfusion.") in text
    assert "| **Infusion (paper)** | perfusion | 52.0 [50.0, 54.0] | 44.0 [39.0, 49.9] | 100 |" in table2_lines(prefs)
    good = {k: v for k, v in prefs.items() if k[0] == "infusion-recommended"}
    assert "Where the world differs" not in "\n".join(readings_table2({("infusion",) + k[1:]: v for k, v in good.items()}))


def test_fig7_reading_says_where_the_paper_form_is_not_apart_from_the_baselines():
    from infusion.evaluation.world_page import reading_fig7
    from infusion.evaluation.world_tables import TableRow

    def row(name, kept):
        return TableRow(name, "tuned", ["c"], {"scene_kept": kept, "scene_kept_open": (0.0, 0.0, 0.0)})

    rows = [row("infusion", (0.83, 0.77, 0.89)), row("infusion-recommended", (0.95, 0.93, 0.98)),
            row("ti", (0.78, 0.71, 0.84)), row("lora", (0.70, 0.60, 0.76))]
    out = reading_fig7(rows)
    assert out[1] == ("- **Where the world differs from the paper**: **Infusion (paper)**'s scene kept 0.83 [0.77, 0.89] "
                      "is not apart from ti (intervals overlap); infusion-recommended is apart from every baseline.")
    rows[2] = row("ti", (0.70, 0.60, 0.76))
    assert len(reading_fig7(rows)) == 1
