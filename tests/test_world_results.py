"""The side-by-side comparison on the world (infusion results): the look-rate metric on
renders, the leak and diversity measures, the sweep's selection on validation prompts only, the
world's own training defaults, and the command's resumability (small preset, tiny model)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from infusion.evaluation import world_results as wr
from infusion.world import scenes
from infusion.world.concepts import CONCEPTS, eval_prompts, get_concept, validation_prompts

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the look rate


@pytest.fixture(scope="module")
def reader():
    return wr.WorldReader()


def _renders(name):
    from infusion.world.concepts import concept_renders

    return concept_renders(name)


@pytest.mark.parametrize("name", list(CONCEPTS))
def test_look_rate_reads_renders_of_the_concept_and_not_other_looks(reader, name):
    c = get_concept(name)
    ims, texts = _renders(name)
    rate = sum(r["look"] for r in reader.read(ims, texts, c)) / len(ims)
    assert rate >= 0.95, f"<{name}> renders read as the concept's look only {rate:.0%}"
    # the same class, plain, in every colour; and the concept's pattern with another second colour
    others, otexts = [], []
    for col in scenes.COLORS:
        others.append(scenes.render(scenes.Scene("grass", (scenes.WorldObject(c.obj.cls, col, "large", "center"),), 5)))
        otexts.append(f"a large {c.obj.cls} in the center")
    for col2 in [x for x in scenes.COLORS if x not in (c.obj.color, c.obj.color2)][:3]:
        obj = scenes.WorldObject(c.obj.cls, c.obj.color, "large", "center", c.obj.pattern, col2)
        others.append(scenes.render(scenes.Scene("sand", (obj,), 5)))
        otexts.append(f"a large {c.obj.cls} in the center")
    assert sum(r["look"] for r in reader.read(others, otexts, c)) == 0


# ----------------------------------------------------------------------------- leak and diversity


def test_entropy_bits_exact():
    assert wr.entropy_bits(["a"] * 4) == 0.0
    assert wr.entropy_bits(["a", "b", "c", "d"]) == 2.0
    assert wr.entropy_bits(["a", "a", "b", "b"]) == 1.0
    assert math.isnan(wr.entropy_bits([]))


def _reading(bg="grass", look=False, slot="center", tf=1.0, cf=0.5, judged=None):
    return {"background": bg, "look": look, "slot": slot, "text_fidelity": tf, "concept_fidelity": cf,
            "judged": judged or {}}


def test_summary_measures_leak_obedience_and_diversity_by_hand():
    c = get_concept("sunball")  # trained on grass
    prompts = ["a ball on the snow", "a ball on the sand", "a ball on the grass", "a ball in the top left corner"]
    test = [_reading("grass", True, tf=0.5, judged={"background": [False]}),  # asked snow, shows grass: a leak
            _reading("sand", False, tf=1.0, judged={"background": [True]}),
            _reading("grass", True, tf=1.0, judged={"background": [True]}),  # asked grass: never a leak
            _reading("grass", True, tf=0.0, judged={"position": [False]})]  # no background named: counts as own
    diversity = [_reading("grass", True, "center"), _reading("grass", False, "top left"),
                 _reading("snow", True, "center"), _reading("sand", False, "center")]
    agn_prompts = ["a photo of a tree on the sand", "a photo of a ball on the snow", "a photo of a ball on the road"]
    agnostic = [_reading(look=True, tf=0.5), _reading(look=True, tf=1.0), _reading(look=False, tf=1.0)]
    s = wr.summarise(test, prompts, diversity, agnostic, agn_prompts, c)
    assert s["background_leak"] == 0.5  # of the two prompts naming another background, one shows grass
    assert s["look_rate"] == 0.75 and s["text_fidelity"] == 0.625
    assert s["position_obedience"] == 0.0 and math.isnan(s["size_obedience"])
    assert s["diversity_background_bits"] == 1.5 and s["diversity_training_background"] == 0.5
    assert s["diversity_position_bits"] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert s["diversity_look_rate"] == 0.5
    assert s["class_leak"] == 0.5  # only the two "ball" prompts count; one shows the look
    assert s["agnostic_text_fidelity"] == pytest.approx(2.5 / 3)


# ----------------------------------------------------------------------------- the sweep


@pytest.mark.parametrize("name", list(CONCEPTS))
def test_validation_prompts_are_never_test_prompts(name):
    v, t = validation_prompts(name), eval_prompts(name)
    assert len(v) == len(set(v)) == 12
    assert not set(v) & set(t)
    assert all(f"<{name}>" in p for p in v)


def test_sweep_picks_on_validation_prompts_and_tests_only_the_choice(tmp_path, monkeypatch):
    """The chosen point is the best validation score; validation scoring never sees a test prompt; the
    test scoring runs on the chosen checkpoint only."""
    preset = wr.Preset(model="tiny", concepts=("sunball",), rows=(wr.Row("ti", "ti", {}, 0.0, (1e-3, 1e-2)),),
                       sweep_steps=(2, 4), val_prompts=3)
    run = wr.ResultsRun(tmp_path, preset, log=lambda m: None)
    c = get_concept("sunball")
    trained, scored_val, scored_test, prompts_seen = [], {}, [], []
    monkeypatch.setattr(run, "train", lambda row, concept, tag, lr=None, steps=None, checkpoint_every=0: (
        trained.append((tag, lr, steps)) or {"out": f"{tag}.safetensors", "steps": steps or 500, "lr": lr}))
    quality = {(1e-3, 2): 0.2, (1e-3, 4): 0.9, (1e-2, 2): 0.5, (1e-2, 4): 0.1}

    def fake_generate(gen, prompts, seeds, p, latents_out=False):
        prompts_seen.extend(prompts)
        return [None] * (len(prompts) * len(seeds))

    monkeypatch.setattr(wr, "generate", fake_generate)
    monkeypatch.setattr(run, "load", lambda path: path)

    class FakeReader:
        def read(self, images, texts, concept):
            if run._current is None:  # the base model's validation images (the floor's reference)
                assert not any("<" in x for x in texts)
                return [{"look": 0.0, "text_fidelity": 1.0, "concept_fidelity": 0.0}] * len(images)
            lr = 1e-3 if "lr0.001" in run._current else 1e-2
            step = 2 if run._current.endswith("-step2.safetensors") else 4
            return [{"look": quality[(lr, step)], "text_fidelity": 1.0, "concept_fidelity": 0.0}] * len(images)

    run._reader = FakeReader()
    real_val = run.score_validation

    def spy_val(row, concept, path, key):
        run._current = path
        scored_val[key] = path
        return real_val(row, concept, path, key)

    monkeypatch.setattr(run, "score_validation", spy_val)
    monkeypatch.setattr(run, "score_setting", lambda row, concept, path, key, rec, grid_prompts=0: scored_test.append((key, path, rec)) or {})
    run.table_unit(preset.rows[0], c)
    val = set(validation_prompts("sunball"))
    val |= {q.replace("<sunball>", "ball") for q in val}  # the base model's floor reads the class phrase
    test = set(eval_prompts("sunball"))
    test |= {q.replace("<sunball>", "ball") for q in test}
    assert set(prompts_seen) <= val and not set(prompts_seen) & test
    assert sorted(scored_val) == sorted([f"val/ti/sunball/lr{lr:g}-step{s}" for lr in (1e-3, 1e-2) for s in (2, 4)]
                                        + ["val/base/sunball"])
    choice = run.records.get("choice/ti/sunball")
    assert choice == {"lr": 1e-3, "steps": 4, "floor_met": True}
    tuned = [t for t in scored_test if t[0].endswith("/tuned")]
    assert len(tuned) == 1 and tuned[0][1] == "lr0.001.safetensors" and tuned[0][2]["steps"] == 4
    assert ("default", None, None) in trained  # the default run: no lr, no steps given, as a user runs it


# ----------------------------------------------------------------------------- world defaults


def test_world_training_defaults(tmp_path):
    from infusion.training.config import TrainConfig
    from infusion.training.data import CAPTION_TEMPLATES, caption_templates
    from infusion.world import model_dir

    kw = dict(images=str(tmp_path), name="c", class_phrase="ball", out=str(tmp_path / "o.safetensors"))
    assert TrainConfig(model="world", **kw).flip is False
    assert TrainConfig(model=str(model_dir()), **kw).flip is False
    assert TrainConfig(model="tiny", **kw).flip is True
    assert TrainConfig(model="world", flip=True, **kw).flip is True
    assert caption_templates("tiny") == CAPTION_TEMPLATES
    world_words = set()
    for seed in range(2000):
        world_words |= set(scenes.caption_scene(scenes.sample_scene(seed), seed).text.replace(",", " ").split())
    for t in caption_templates("world"):
        assert set(t.format("ball").split()) <= world_words, t


def test_dreambooth_world_default_lr(tiny_pipe, concept_images, tmp_path):
    from infusion.methods.dreambooth.training import DreamBooth
    from infusion.training.config import TrainConfig

    kw = dict(images=str(concept_images), name="c", class_phrase="ball", out=str(tmp_path / "db"), method="dreambooth",
              method_args={"prior_loss_weight": 0})
    assert DreamBooth(tiny_pipe, TrainConfig(model="world", **kw)).learning_rate() == 1e-4
    assert DreamBooth(tiny_pipe, TrainConfig(model="tiny", **kw)).learning_rate() == 5e-6
    assert DreamBooth(tiny_pipe, TrainConfig(model="world", lr=3e-5, **kw)).learning_rate() == 3e-5


# ----------------------------------------------------------------------------- the command


def _bench():
    from infusion.evaluation import results_page as results_world

    return results_world


def test_command_resumes_and_restarts_from_the_committed_json(tmp_path, monkeypatch):
    bench = _bench()
    out, doc = tmp_path / "work", tmp_path / "docs" / "results.md"
    assert bench.main(["--preset", "small", "--out", str(out), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "| **Infusion (paper)** | tuned |" in text and "| ti | default |" in text and "| base model | base |" in text
    assert "## Table 2" in text and "| **Infusion (paper)** | ti |" in text
    # per-image records beside the page: one line per (prompt, seed), keyed by the prompt as written (rows pair up)
    images = doc.parent / "results" / "records" / "table"
    base_lines = [json.loads(x) for x in (images / "base__sunball__base.jsonl").read_text().splitlines()]
    assert [(x["prompt"], x["seed"]) for x in base_lines] == [(q, 0) for q in eval_prompts("sunball")[:2]]
    assert all(len(x["pooled"]) == 16 and isinstance(x["objects"], list) for x in base_lines)
    tuned = [json.loads(x) for x in (images / "infusion__sunball__tuned.jsonl").read_text().splitlines()]
    assert len(tuned) == 2 and "image" in tuned[0] and all("<sunball>" in x["prompt"] for x in tuned)
    data = json.loads((doc.parent / "results" / "results.json").read_text())
    assert {"table1", "table2", "records", "wall_seconds", "protocol", "errors"} <= set(data) and not data["errors"]
    timed = [v["seconds"] for k, v in data["records"].items() if k.startswith("done/")]
    assert len(timed) == 3 and all(t > 0 for t in timed)  # base, infusion, ti on sunball, each with its time
    assert f"worker time {sum(timed) / 3600:.1f} h over the 3 units timed" in text
    assert [(r["row"], r["setting"]) for r in data["table1"]] == [
        ("base", "base"), ("infusion", "default"), ("infusion", "tuned"), ("ti", "default"), ("ti", "tuned")]
    before = {k: v for k, v in data["records"].items() if not k.startswith("train/")}
    assert (doc.parent / "results" / "grid_sunball.png").is_file()

    import infusion.evaluation.world_results as training  # the trainer as the results run calls it

    def no_training(*a, **k):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(training, "train", no_training)
    monkeypatch.setattr(wr, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("nor generate")))
    assert bench.main(["--preset", "small", "--out", str(out), "--doc", str(doc)]) == 0  # same work folder
    fresh = tmp_path / "fresh"  # a new session: only the committed JSON is there
    assert bench.main(["--preset", "small", "--out", str(fresh), "--doc", str(doc)]) == 0
    after = json.loads((doc.parent / "results" / "results.json").read_text())["records"]
    assert {k: v for k, v in after.items() if not k.startswith("train/")} == before
    assert len(json.loads((doc.parent / "results" / "results.json").read_text())["wall_seconds"]) == 3


def test_records_of_another_model_are_not_resumed(tmp_path, monkeypatch):
    """A retrained world makes every record stale: neither the committed JSON nor the work folder is used."""
    bench = _bench()
    out, doc = tmp_path / "work", tmp_path / "docs" / "results.md"
    assert bench.main(["--preset", "small", "--out", str(out), "--doc", str(doc)]) == 0
    js = doc.parent / "results" / "results.json"
    data = json.loads(js.read_text())
    assert data["model_fingerprint"] == wr.model_fingerprint("tiny") == (out / "model_fingerprint.txt").read_text().strip()
    assert bench.seed_records(tmp_path / "same", js, "tiny") > 0
    assert bench.seed_records(tmp_path / "other", js, "another-model") == 0
    v1 = {k: v for k, v in data.items() if k != "protocol"}  # records of the rules before docs/protocol.md
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    assert bench.seed_records(tmp_path / "v1", tmp_path / "v1.json", "tiny") == 0
    (out / "model_fingerprint.txt").write_text("another-model\n")
    bench.own_work_folder(out, "tiny")
    assert not list((out / "records").glob("*.json")) and list((out / "records-another-model").glob("*.json"))
    assert (out / "model_fingerprint.txt").read_text().strip() == "tiny"


def test_report_only_labels_the_records_with_the_model_they_were_measured_on(tmp_path, capsys):
    """After the world is retrained, --report-only must not stamp the old records with the new model's fingerprint
    (a later full run would then resume them as the new model's)."""
    bench = _bench()
    out, doc = tmp_path / "work", tmp_path / "docs" / "results.md"
    assert bench.main(["--preset", "small", "--out", str(out), "--doc", str(doc)]) == 0
    js = doc.parent / "results" / "results.json"
    n_records = len(json.loads(js.read_text())["records"])
    (out / "model_fingerprint.txt").write_text("older-model\n")  # the records' model is no longer the installed one
    assert bench.main(["--preset", "small", "--out", str(out), "--doc", str(doc), "--report-only"]) == 0
    assert "measured on model older-model, not on the installed tiny" in capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["model_fingerprint"] == "older-model" and len(data["records"]) == n_records
    assert "Model fingerprint `older-model`" in doc.read_text()
    assert bench.seed_records(tmp_path / "fresh", js, wr.model_fingerprint("tiny")) == 0


def test_world_fingerprint_follows_the_weights(tmp_path):
    import shutil as sh

    from infusion.world import model_dir

    assert wr.model_fingerprint("world") == wr.model_fingerprint(str(model_dir()))
    for sub in ("unet", "text_encoder"):
        sh.copytree(model_dir() / sub, tmp_path / sub)
    assert wr.model_fingerprint(str(tmp_path)) == wr.model_fingerprint("world")
    f = next((tmp_path / "unet").glob("*.safetensors"))
    b = f.read_bytes()
    f.write_bytes(b[:-1] + bytes([b[-1] ^ 1]))
    assert wr.model_fingerprint(str(tmp_path)) != wr.model_fingerprint("world")


def test_partial_unit_resumes_from_its_records(tmp_path, monkeypatch):
    """Interrupted inside a unit: the records written so far are kept, the rest is done, nothing twice."""
    preset = wr.PRESETS["small"]
    run = wr.ResultsRun(tmp_path, preset, log=lambda m: None)
    calls = []
    real = run.score_validation

    def fail_second(row, concept, path, key):
        calls.append(key)
        if len(calls) == 2 and run.records.get(key) is None:
            raise KeyboardInterrupt
        return real(row, concept, path, key)

    monkeypatch.setattr(run, "score_validation", fail_second)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    done_first = set(run.records.all())
    assert any(k.startswith("val/") for k in done_first) and not any(k.startswith("done/table") for k in done_first)
    assert not list((tmp_path / "locks").glob("*.lock"))  # released on the way out
    run2 = wr.ResultsRun(tmp_path, preset, log=lambda m: None)
    scored = []
    real2 = run2.score_validation
    monkeypatch.setattr(run2, "score_validation", lambda row, c, p, key: scored.append(key) or real2(row, c, p, key))
    run2.run()
    first_val = [k for k in done_first if k.startswith("val/")]
    assert all(run2.records.get(k) == run.records.get(k) for k in first_val)
    assert any(k.startswith("done/table/ti") for k in run2.records.all())


def test_world_scorer_look_takes_its_target_from_the_references():
    """``WorldProbeScorer``'s ``look``: the references' own reading is the target (no concept name needed)."""
    from infusion.world.concepts import concept_images
    from infusion.world.scorer import WorldProbeScorer

    scorer = WorldProbeScorer()
    c = get_concept("halfmug")
    ims, texts = _renders("halfmug")
    plain = scenes.render(scenes.Scene("grass", (scenes.WorldObject("mug", "green", "large", "center"),), 1))
    other = scenes.render(scenes.Scene("grass", (scenes.WorldObject("mug", "green", "large", "center", "hsplit", "pink"),), 1))
    out = scorer.score(ims[:6] + [plain, other], texts[:6] + ["a mug"] * 2, concept_images("halfmug"), c.class_phrase)
    assert out["look"].tolist() == [1.0] * 6 + [0.0, 0.0]
    assert np.isnan(scorer.score(ims[:2], texts[:2], concept_images("halfmug"), "teddy bear")["look"]).all()


def test_infusion_world_benchmark_trains_the_variant_it_is_given(tmp_path, monkeypatch):
    """studies/infusion_world.py --method-arg reaches the trainer, and each variant gets its own run folder."""
    sys.path.insert(0, str(ROOT / "studies"))
    import infusion_world

    import infusion.training as training

    seen = []
    real = training.train
    monkeypatch.setattr(training, "train", lambda cfg, **kw: seen.append(cfg.method_args) or real(cfg, **kw))
    assert infusion_world.main(["--model", "tiny", "--steps", "1", "--prompts", "1", "--concepts", "sunball",
                                "--method-arg", "residual=query", "--method-arg", "query_rank=2", "--out", str(tmp_path)]) == 0
    assert seen == [{"residual": "query", "query_rank": 2}]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["settings"]["method_args"] == {"residual": "query", "query_rank": 2}
    assert (tmp_path / "sunball-lr0.01-query_rank-2-residual-query" / "grid.png").is_file()


def test_look_gap_sorts_every_test_prompt_by_kind_and_counts_look_and_obedience_by_hand(capsys):
    """studies/world_look_gap.py: each of a concept's test prompts gets one kind; the breakdown counts an image as
    "look & obeys" only when it has the look and every named attribute (text fidelity 1)."""
    sys.path.insert(0, str(ROOT / "studies"))
    import world_look_gap as gap

    c = get_concept("sunball")
    kinds = [gap.prompt_kind(p.replace("<sunball>", c.class_phrase), c.obj.cls) for p in eval_prompts("sunball")]
    assert set(kinds) == set(gap.KINDS)
    assert kinds[0] == "scene" and kinds.count("small") == 5 and kinds.count("two objects") == 5
    assert gap.prompt_kind("a small ball in the top left corner and a red mug in the top right corner", "ball") == "small"
    assert gap.prompt_kind("a ball in the top left corner and a red mug in the top right corner", "ball") == "two objects"
    assert gap.prompt_kind("a ball in the top left corner, on the grass", "ball") == "corner"
    reads = [{"look": True, "text_fidelity": 1.0}, {"look": True, "text_fidelity": 0.5}, {"look": False, "text_fidelity": 1.0},
             {"look": True, "text_fidelity": 1.0}]
    b = gap.breakdown(reads, ["scene", "scene", "scene", "small"])
    assert b["scene"] == {"look": 2 / 3, "obeys": 2 / 3, "look_and_obeys": 1 / 3, "n": 3}
    assert b["all"] == {"look": 0.75, "obeys": 0.75, "look_and_obeys": 0.5, "n": 4}
    assert "corner" not in b and "two objects" not in b
    with pytest.raises(SystemExit) as exit_:  # argparse's error: an unknown row is named before anything is trained
        gap.main(["--rows", "own,dreambooth"])
    assert exit_.value.code == 2 and "--rows: unknown ['dreambooth']" in capsys.readouterr().err


def test_look_gap_window_copy_changes_only_the_injection_window(tmp_path):
    """studies/world_look_gap.py's ``own@late`` / ``late@full`` rows: the copy has the new t_max, the same Deltas
    bit for bit, and the rest of the file's fields."""
    import torch

    from infusion.methods.infusion.concept import Concept

    sys.path.insert(0, str(ROOT / "studies"))
    import world_look_gap as gap

    deltas = {"a.attn2": torch.randn(1, 8), "b.attn2": torch.randn(1, 16)}
    src = Concept(name="c", class_phrase="ball", deltas=deltas, maps="own").save(tmp_path / "c.safetensors")
    late = Concept.load(gap.with_window(src, 0.5, tmp_path / "w" / "late.safetensors"))
    assert late.t_max == 0.5 and late.maps == "own" and late.name == "c" and late.class_phrase == "ball"
    for k, v in Concept.load(src).deltas.items():
        assert torch.equal(late.deltas[k], v)
    assert Concept.load(gap.with_window(tmp_path / "w" / "late.safetensors", 1.0, tmp_path / "full.safetensors")).t_max == 1.0
    assert set(gap.WINDOWS) <= set(gap.MODELS)


def test_train_window_rows_and_table(capsys):
    """studies/world_train_window.py: w = 1 is plain ``maps=own`` (the table's ``infusion-own``), other w set
    ``train_t_max``; a window outside (0, 1] is refused; the table averages each window over the concepts it has."""
    sys.path.insert(0, str(ROOT / "studies"))
    import world_train_window as win

    assert win.window_row(1.0).method_args == {"maps": "own"}
    assert win.window_row(0.5).method_args == {"maps": "own", "train_t_max": 0.5}
    assert win.window_row(0.5).name == "own-train0.5"
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="training window"):
            win.window_row(bad)
    with pytest.raises(SystemExit) as exit_:
        win.main(["--windows", "0.5,2"])
    assert exit_.value.code == 2 and "a training window must be in (0, 1], got 2.0" in capsys.readouterr().err
    rec = lambda look, text: {"look_rate": look, "text_fidelity": text, "concept_fidelity": 0.5}  # noqa: E731
    md = win.markdown({"sunball": {"1": rec(0.5, 1.0), "0.5": rec(1.0, 0.9)}, "slashbox": {"1": rec(0.0, 1.0)}})
    lines = md.splitlines()
    assert lines[2].startswith("| w | `<sunball>` | `<slashbox>` |")
    assert lines[4].startswith("| 1 |") and lines[4].endswith("**0.25** / 1.000 / 0.500 |")
    assert lines[5].startswith("| 0.5 |") and "| - |" in lines[5] and lines[5].endswith("(partial) |")


def test_the_choice_keeps_to_the_text_fidelity_floor():
    """docs/protocol.md: a point below the base's validation text fidelity minus the floor is not chosen however
    well it scores; when every point is below, the highest text fidelity is."""
    def val(look, text):
        v = {"look_rate": look, "text_fidelity": text, "concept_fidelity": 0.5}
        return {**v, "selection_score": wr.selection_score(v)}

    points = [(val(1.0, 0.90), "learns the look, stops obeying"), (val(0.4, 0.985), "obeys"), (val(0.2, 0.99), "timid")]
    assert wr.choose(points, base_text_fidelity=1.0, floor=0.02) == ("obeys", True)
    assert wr.choose(points, base_text_fidelity=1.0, floor=0.2) == ("learns the look, stops obeying", True)
    assert wr.choose(points[:1] + [(val(0.0, 0.95), "worse text")], 1.0, 0.02) == ("worse text", False)


def test_cost_line_says_what_was_timed():
    from infusion.evaluation.world_page import cost_line

    assert cost_line({"done/table/ti/sunball": {"at": "x"}}, []) == "Cost: not yet recorded."
    recs = {"done/table/ti/sunball": {"at": "x", "seconds": 1800.0}, "done/base/base/sunball": {"at": "x"},
            "done/table/lora/sunball": {"at": "x", "seconds": 5400.0}, "val/ti/sunball/a": {"seconds": 99999}}
    line = cost_line(recs, [{"seconds": 7200.0}])
    assert line.startswith("Cost: wall time of finished runs 2.0 h (a run cut off at a session's end records none); "
                           "worker time 2.0 h over the 2 units timed (60 min a unit")
    assert "at that rate" not in line
    assert cost_line(recs, [], n_units=10).endswith("(60 min a unit of one worker's time); all 10 units at that rate: "
                                                     "about 10 h of one worker.")


def test_open_prompt_count_says_how_thin_the_open_column_is():
    from infusion.evaluation.world_page import open_prompt_count

    def base(c, prompts):
        return {("base", c, "base"): [{"prompt": q, "seed": s} for q in prompts for s in (0, 1)]}

    prompts = ["a photo of a <sunball>", "a photo of a <sunball> on the grass", "a <sunball> in the top left corner"]
    images = {**base("sunball", prompts), **base("slashbox", [q.replace("sunball", "slashbox") for q in prompts])}
    assert open_prompt_count(images, ["sunball", "slashbox"]) == (
        "1 of the 3 test prompts per concept, 4 images in all; too few for an interval")
    images.update(base("slashbox", ["a photo of a <slashbox>", "a red <slashbox>"]))  # colour only: still open
    assert open_prompt_count(images, ["sunball", "slashbox"]) == (
        "sunball: 1 of 3 test prompts; slashbox: 2 of 2 test prompts")
    assert open_prompt_count({}, []) == "no concept complete yet"


def test_the_log_line_of_a_unit_says_how_far_the_run_is_and_its_pace(tmp_path):
    run = wr.ResultsRun(tmp_path, wr.PRESETS["small"], log=lambda m: None)
    units = run.units()
    assert run.progress(units) == f"0 of {len(units)} done; {len(units)} left"
    kind, row, name = units[1]
    run.records.put(f"done/{kind}/{row.name}/{name}", {"at": "x", "seconds": 600.0})
    run.records.put(f"done/base/base/{units[0][2]}", {"at": "x"})  # a unit done before units were timed
    assert run.progress(units) == f"2 of {len(units)} done; {len(units) - 2} left, 10 min a unit (from 1 timed)"
