"""The paper's figures on the world (Figs. 9-11) and the rules every interval on the results page follows."""

import json

import numpy as np
import pytest
import torch

from infusion.evaluation import world_figures as wf
from infusion.evaluation import world_results as wr
from infusion.evaluation.intervals import bootstrap_interval, mean_interval
from infusion.world.concepts import get_concept


def test_the_base_row_is_generated_with_the_class_phrase(tmp_path, monkeypatch):
    """The base model never sees "<sunball>": its test images, diversity images and W2 reference latents are of the
    prompt a user writes ("a ball")."""
    preset = wr.Preset(model="tiny", concepts=("sunball",), test_prompts=3, test_seeds=1, diversity_seeds=1,
                       agnostic_prompts=1, lfd_samples=0, ddim_steps=1)
    run = wr.ResultsRun(tmp_path, preset, log=lambda m: None)
    seen = []

    def fake_generate(gen, prompts, seeds, p, latents_out=False):
        seen.extend(prompts)
        images = [None] * (len(prompts) * len(seeds))
        return (images, torch.zeros(len(images), 4, 4, 4)) if latents_out else images

    class FakeReader:
        def read(self, images, texts, concept):
            return [{"look": False, "text_fidelity": 1.0, "concept_fidelity": 0.0, "background": "sand", "slot": "none",
                     "judged": {}}] * len(images)

    monkeypatch.setattr(wr, "generate", fake_generate)
    monkeypatch.setattr(run, "load", lambda path: None)
    run._reader = FakeReader()
    c = get_concept("sunball")
    run.score_setting(wr.BASE_ROW, c, None, "test/base/sunball/base", None)
    assert seen and not any("<" in p for p in seen), seen
    assert "a photo of a ball" in seen
    assert (tmp_path / "latents" / "sunball-base.safetensors").is_file()  # no pickle
    seen.clear()
    run.score_setting("ti", c, "x.safetensors", "test/ti/sunball/default", None)
    assert seen[:3] == wr.test_prompt_set("sunball", preset) and all("<sunball>" in p for p in seen[:3])  # the token


def test_bootstrap_interval_is_stratified_and_reproducible():
    a, b = [0.0] * 50, [1.0] * 5  # two concepts of very different sizes: each keeps its weight
    est, lo, hi = mean_interval([a, b])
    assert est == lo == hi == 0.5
    x = np.random.default_rng(3).normal(size=200)
    est, lo, hi = mean_interval([x])
    assert lo < est < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.2)
    assert mean_interval([x]) == (est, lo, hi)  # same resamples every time
    with pytest.raises(ValueError, match="at least one unit"):
        bootstrap_interval([3, 0], lambda picks: 0.0)


def _line(row, concept, step, pooled, lfd):
    return {"row": row, "concept": concept, "step": step, "lr": 0.01, "pooled": pooled, "lfd": lfd,
            "text_fidelity": [1.0] * len(pooled), "concept_fidelity": [0.5] * len(pooled), "look": [False] * len(pooled)}


def test_w2_curve_is_zero_for_the_base_and_the_shift_for_a_shifted_model(tmp_path):
    """Fig. 9 from records: a row whose latents are the base's has W2 0, one shifted by s has W2 ||s||; Fig. 10 is
    the mean LFD; rows and steps without records are left out, not drawn as zero."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 16))
    plan = wf.FigurePlan(concepts=("sunball",), rows=(wf.FIGURE_ROWS[0], wf.FIGURE_ROWS[2]), steps=(1, 2),
                         fig11_steps=(2,))
    (tmp_path / "base__sunball.json").write_text(json.dumps({"pooled": base.tolist()}))
    shift = np.zeros(16)
    shift[:4] = 0.5
    with open(tmp_path / "infusion__sunball.jsonl", "w") as f:
        f.write(json.dumps(_line("infusion", "sunball", 1, base.tolist(), [0.0, 0.0])) + "\n")
        f.write(json.dumps(_line("infusion", "sunball", 2, (base + shift).tolist(), [1.0, 3.0])) + "\n")
    b, lines = wf.load_records(tmp_path, plan)
    curve = wf.w2_curve(b, lines, "infusion", ["sunball"], plan.steps, seeds=2)
    assert [p[0] for p in curve] == [1, 2]
    assert curve[0][1] == pytest.approx(0.0, abs=1e-6)
    assert curve[1][1] == pytest.approx(float(np.linalg.norm(shift)), rel=1e-6)
    assert wf.lfd_curve(lines, "infusion", ["sunball"], plan.steps)[-1][1] == pytest.approx(2.0)
    assert wf.w2_curve(b, lines, "ti", ["sunball"], plan.steps, seeds=2) == []  # no records: no point
    written = wf.draw_curves(tmp_path, plan, tmp_path / "figs", seeds=2)
    assert [p.name for p in written] == ["fig9_w2.png", "fig10_lfd.png"]


def test_the_figures_stage_trains_scores_and_resumes_from_its_records(tmp_path, monkeypatch):
    """A plumbing run on the tiny model: one JSON line per checkpoint, Fig. 11 images at its steps, the base reference
    with the class phrase; a second run trains nothing and appends nothing."""
    from infusion.evaluation.results_page import main

    # the tiny model has no data of its own for the LFD: give it three random "real" latents and captions
    monkeypatch.setattr(wf, "lfd_dataset", lambda cfg, pipe: (torch.randn(3, 4, 4, 4), ["a dog", "a cat", "a car"]))
    doc = tmp_path / "doc" / "results.md"
    args = ["--stage", "figures", "--preset", "small", "--model", "tiny", "--out", str(tmp_path / "w"), "--doc", str(doc)]
    assert main(args) == 0
    records = doc.parent / "results" / "records" / "figures"
    lines = wf.read_lines(records / "infusion__sunball.jsonl")
    assert [x["step"] for x in lines] == [1, 2] and all("fig11" in x for x in lines)
    assert all(x["lfd"] == [0.0, 0.0, 0.0] for x in lines)  # one value per latent; Infusion leaves other prompts alone
    assert len(lines[0]["pooled"]) == 2 and len(lines[0]["pooled"][0]) == 16  # 2 prompts x 1 seed, 4 x 2 x 2 pooled
    base = json.loads((records / "base__sunball.json").read_text())
    assert not any("<" in p for p in base["prompts"])
    assert (doc.parent / "results" / "fig11_sunball.png").is_file()

    def no_training(*a, **k):
        raise AssertionError("a finished unit must not train again")

    monkeypatch.setattr(wr, "train", no_training)
    assert main(args) == 0
    assert wf.read_lines(records / "infusion__sunball.jsonl") == lines


def test_table2_rule_on_hand_made_records():
    """Ties count half, an unreadable value ties, only shared (concept, prompt, seed) count, concepts weigh alike."""
    from infusion.evaluation.preference import outcome, preference

    assert outcome(0.8, 0.5) == 1.0 and outcome(0.5, 0.8) == 0.0 and outcome(0.5, 0.5) == 0.5
    assert outcome(float("nan"), 0.1) == 0.5 and outcome(None, 0.1) == 0.5

    def rec(concept, prompt, seed, t, c):
        return {"concept": concept, "prompt": prompt, "seed": seed, "text_fidelity": t, "concept_fidelity": c}

    a = [rec("x", "p1", 0, 1.0, 0.9), rec("x", "p1", 1, 0.5, 0.2), rec("x", "p2", 0, 0.5, 0.5),
         rec("y", "q1", 0, 0.0, 0.7), rec("y", "q9", 0, 1.0, 1.0)]  # q9: the other model has no such image
    b = [rec("x", "p1", 0, 0.5, 0.1), rec("x", "p1", 1, 0.5, 0.3), rec("x", "p2", 0, 1.0, float("nan")),
         rec("y", "q1", 0, 1.0, 0.6)]
    text = preference(a, b, "text")
    # x: p1 -> (1 + 0.5) / 2 = 0.75, p2 -> 0; mean 0.375. y: q1 -> 0. Mean over concepts: 0.1875
    assert text.share == pytest.approx(0.1875) and text.pairs == 4 and text.prompts == 3
    image = preference(a, b, "image")
    # x: p1 -> (1 + 0) / 2 = 0.5, p2 -> 0.5 (NaN ties); y: q1 -> 1. Mean: (0.5 + 1) / 2 = 0.75
    assert image.share == pytest.approx(0.75) and image.low <= image.share <= image.high
    assert preference(b, a, "image").share == pytest.approx(0.25)  # the other way round: 1 - share
    with pytest.raises(ValueError, match="share no"):
        preference(a, [rec("z", "r", 0, 1, 1)], "text")
