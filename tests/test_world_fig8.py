"""Fig. 8 on the world (two concepts in one prompt): the prompts, the per-object reading on renders, and the stage's
plumbing end to end on the tiny model (train, merge Custom Diffusion, compose Infusion, read, table, figure)."""

import json

import pytest
import torch

from infusion.evaluation import world_fig8 as f8
from infusion.world import scenes
from infusion.world.concepts import get_concept
from infusion.world.fidelity import parse_caption


def test_pair_prompts_name_both_concepts_elsewhere():
    for pair in f8.FIG8_PLANS["full"].pairs:
        ps = f8.pair_prompts(pair, 8)
        assert len(ps) == len(set(ps)) == 8 and ps == f8.pair_prompts(pair, 8)  # the same every run
        a, b = (get_concept(c) for c in pair)
        for p in ps:
            assert f"<{a.name}>" in p and f"<{b.name}>" in p
            named = parse_caption(p.replace(f"<{a.name}>", a.class_phrase).replace(f"<{b.name}>", b.class_phrase))
            assert sorted(o["cls"] for o in named.objects) == sorted([a.class_phrase, b.class_phrase])
            assert named.background not in (a.background, b.background)


def test_the_pair_reader_reads_each_objects_look_on_renders():
    """A render with both concepts at their corners reads both looks; one with a plain object in a concept's place
    reads that look as missing."""
    from infusion.world.scorer import WorldProbeScorer

    a, b = get_concept("sunball"), get_concept("halfmug")
    oa = scenes.WorldObject(**{**a.obj.__dict__, "position": "top left", "size": "large"})
    ob = scenes.WorldObject(**{**b.obj.__dict__, "position": "bottom right", "size": "large"})
    plain = scenes.WorldObject("mug", "green", "large", "bottom right")
    text = "a ball in the top left corner and a mug in the bottom right corner, on the snow"
    ims = [scenes.render(scenes.Scene("snow", (oa, ob), jitter_seed=s)) for s in range(4)]
    ims += [scenes.render(scenes.Scene("snow", (oa, plain), jitter_seed=s)) for s in range(4)]
    reads = f8.PairReader(WorldProbeScorer()).read(ims, [text] * len(ims), [a, b])
    both = [r["objects"]["sunball"]["look"] and r["objects"]["halfmug"]["look"] for r in reads[:4]]
    assert sum(both) >= 3, reads[:4]
    assert all(r["objects"]["halfmug"]["present"] for r in reads)
    assert sum(r["objects"]["halfmug"]["look"] for r in reads[4:]) <= 1
    assert sum(r["objects"]["sunball"]["look"] for r in reads[4:]) >= 3
    assert min(r["text_fidelity"] for r in reads) >= 0.75


def test_fig8_stage_end_to_end_on_the_tiny_model(tmp_path):
    torch.set_num_threads(1)
    doc = tmp_path / "doc" / "results.md"
    plan = f8.FIG8_PLANS["small"]
    assert f8.run_fig8("small", "tiny", tmp_path / "work", doc, report_only=False) == 0
    records = doc.parent / "results" / "records" / "fig8"
    for row in plan.rows:
        lines = [json.loads(x) for x in (records / f"{row.name}__sunball+halfmug.jsonl").read_text().splitlines()]
        assert len(lines) == plan.prompts * plan.seeds
        assert set(lines[0]["objects"]) == {"sunball", "halfmug"}
        assert "png" in lines[0]
        solo = [json.loads(x) for x in (records / f"{row.name}__sunball+halfmug__solo.jsonl").read_text().splitlines()]
        assert sorted(x["solo"] for x in solo) == ["halfmug", "sunball"] and all(len(x["objects"]) == 1 for x in solo)
    cd = [json.loads(x) for x in (records / "custom-diffusion__sunball+halfmug.jsonl").read_text().splitlines()]
    merged = tmp_path / "work" / "runs" / "custom-diffusion" / "fig8-merged" / "sunball+halfmug-fig8"
    assert json.loads((merged / "infusion.json").read_text())["concepts"].count("halfmug")
    assert cd[0]["cost"]["merged_bytes"] > 0
    result = json.loads((doc.parent / "results" / "fig8.json").read_text())
    assert set(result["table"]) == {r.name for r in plan.rows}
    est, lo, hi = result["table"]["infusion"]["text_fidelity"]
    assert lo <= est <= hi
    assert "look_alone" in result["table"]["infusion"]
    assert (doc.parent / "results" / "fig8.png").stat().st_size < 300_000
    assert "both looks" in (doc.parent / "results" / "fig8.md").read_text()
    # resumable: a second run generates nothing new
    before = {p.name: p.read_text() for p in records.glob("*.jsonl")}
    assert f8.run_fig8("small", "tiny", tmp_path / "work", doc, report_only=False) == 0
    assert {p.name: p.read_text() for p in records.glob("*.jsonl")} == before


def test_records_of_another_model_are_refused(tmp_path):
    from infusion.evaluation.world_results import PRESETS, ResultsRun

    rec = tmp_path / "records"
    rec.mkdir()
    (rec / "model_fingerprint.txt").write_text("something-else\n")
    with pytest.raises(ValueError, match="move that folder aside"):
        f8.Fig8Run(ResultsRun(tmp_path / "w", PRESETS["small"], log=lambda m: None), f8.FIG8_PLANS["small"], rec)


def _fig8_result():
    """A fig8.json-shaped result whose keys come sorted, as ``json.dumps(sort_keys=True)`` writes them."""
    cell = lambda v: [v, max(0.0, v - 0.1), min(1.0, v + 0.1)] if v else [0.0, 0.0, 0.0]  # noqa: E731
    rows = {"base": 0.0, f8.CD_ROW: 0.0, f8.CD_TUNED_ROW: 0.02, f8.PAPER_ROW: 0.0, f8.RECOMMENDED_ROW: 0.33}
    table = {r: {"pairs": ["a+b"], "n_images": 16, "both_looks": cell(v), "look_first": cell(v), "look_second": cell(v),
                 "both_present": cell(1.0), "text_fidelity": cell(0.9), "concept_fidelity": cell(0.5),
                 "look_alone": cell(0.25)} for r, v in sorted(rows.items())}
    per_pair = {"a+b": {r: {"both_looks": v, "look_first": v, "look_second": v, "text_fidelity": 0.9}
                        for r, v in sorted(rows.items())}}
    return {"table": table, "per_pair": per_pair}


def test_fig8_table_keeps_the_plan_order_and_defines_the_cd_lr_row():
    lines = f8.table_lines(_fig8_result())
    body = [ln.split(" | ")[0][2:] for ln in lines if ln.startswith("| ") and not ln.startswith("| row")]
    assert body == [f8.LABELS[r.name] for r in f8.FIG8_ROWS]  # the figure's order, not fig8.json's sorted one
    assert any(ln.startswith(f"- {f8.LABELS[f8.CD_TUNED_ROW]}: each concept trained at lr 4e-4") for ln in lines)
    per_pair = next(ln for ln in lines if ln.startswith("- a+b: "))
    assert per_pair.index("Infusion (paper)") < per_pair.index("Custom Diffusion (merged)")


def test_fig8_readings_name_the_rows_that_compose_and_where_the_paper_form_differs():
    text = "\n".join(f8.readings(_fig8_result()))
    assert "interval above 0: Infusion (recommended) 0.33; interval reaching 0: base (class words) 0.00" in text
    assert "the paper's Infusion composes both looks in 0.00 of the images (Custom Diffusion: 0.02 at best)" in text
    assert "(control 0.25; Table 1)" in text
    result = _fig8_result()
    result["table"][f8.PAPER_ROW]["both_looks"] = [0.3, 0.2, 0.4]
    assert "Where the world differs" not in "\n".join(f8.readings(result))
    assert f8.readings({"table": {}, "per_pair": {}}) == []
