"""The blind A/B study's plan, answers and Table 2 (``evaluation.study``), and ``infusion study report`` (issue 34).
The page that creates and answers a study is tested in ``test_app.py`` and, in Chromium, ``test_app_browser.py``."""

import argparse
import csv
import json
from collections import Counter

import pytest

from infusion.cli import COMMAND_MODULES
from infusion.commands import study as study_command
from infusion.evaluation.preference import preference
from infusion.evaluation.study import ANSWERS_FILE, Study, plan, table, table_markdown, write_csv

ARMS = [{"label": "infusion", "entry": "ball-a", "method": "infusion"},
        {"label": "ti", "entry": "ball-b", "method": "ti"}]


def _study(tmp_path, arms=ARMS, n=8, prompts=4, seeds=(0, 1)):
    return Study.create(tmp_path / "s", arms, "ball", [f"a <concept> number {k}" for k in range(prompts)],
                        list(seeds), n, {"model": "world", "steps": 2, "guidance": 8.0}, seed=0)


def test_the_plan_is_seeded_balanced_per_pair_and_puts_each_arm_on_both_sides():
    a, b = plan(3, 4, [0, 1], 12, seed=5), plan(3, 4, [0, 1], 12, seed=5)
    assert a == b and a != plan(3, 4, [0, 1], 12, seed=6)  # the seed fixes the study
    assert len({q["id"] for q in a}) == 12 and Counter(tuple(q["pair"]) for q in a) == {(0, 1): 4, (0, 2): 4, (1, 2): 4}
    for pair in ((0, 1), (0, 2), (1, 2)):
        lefts = Counter(q["left"] for q in a if tuple(q["pair"]) == pair)
        assert lefts == {pair[0]: 2, pair[1]: 2}  # each arm on the left in half its questions, on the right in the rest
    units = [(tuple(q["pair"]), q["prompt"], q["seed"]) for q in a]
    assert len(set(units)) == len(units)  # no question asked twice
    with pytest.raises(ValueError, match="give 1 to 8 questions"):
        plan(2, 4, [0, 1], 9)
    with pytest.raises(ValueError, match="at least two"):
        plan(1, 4, [0], 1)


def test_answers_are_appended_as_given_and_the_last_one_counts(tmp_path):
    s = _study(tmp_path)
    q0, q1 = s.questions[0]["id"], s.questions[1]["id"]
    s.answer("ann", q0, "left", "tie")
    s.answer("ann", q0, "right", "right")  # changed her mind: both lines are kept, the last counts
    s.answer("bob", q1, "tie", "left")
    with open(s.folder / ANSWERS_FILE, "a") as f:
        f.write('{"participant": "cut short by a cra')  # a crash mid-line loses that line only
    lines = (s.folder / ANSWERS_FILE).read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["text"] == "left"
    got = {(r["participant"], r["question"]): (r["text"], r["concept"]) for r in Study.load(s.folder).answers()}
    assert got == {("ann", q0): ("right", "right"), ("bob", q1): ("tie", "left")}
    assert s.next_question("ann") == (s.questions[1], 1) and s.next_question("carl") == (s.questions[0], 0)
    with pytest.raises(ValueError, match="one of left, right, tie"):
        s.answer("ann", q1, "better", "left")
    with pytest.raises(ValueError, match="your name or participant code"):
        s.answer("  ", q1, "left", "left")


def test_table_2_counts_sides_through_the_plan_and_cant_tell_as_half(tmp_path):
    s = _study(tmp_path, n=8)
    # ann prefers arm 0 ("infusion") for text wherever it is; for the concept she can't tell, except once she prefers
    # arm 1; bob prefers whatever is on the left for text (half arm 0) and answers half the questions
    expected_text, expected_concept = [], []
    for k, q in enumerate(s.questions):
        side0 = "left" if q["left"] == 0 else "right"
        side1 = "right" if side0 == "left" else "left"
        concept = side1 if k == 0 else "tie"
        s.answer("ann", q["id"], side0, concept)
        expected_text.append(1.0)
        expected_concept.append(0.0 if k == 0 else 0.5)
        if k % 2 == 0:
            s.answer("bob", q["id"], "left", "tie")
            expected_text.append(1.0 if q["left"] == 0 else 0.0)
            expected_concept.append(0.5)
    [row] = table(s)
    assert (row.a, row.b, row.answers, row.participants) == ("infusion", "ti", 12, 2)
    assert row.text.share == pytest.approx(sum(expected_text) / 12, abs=0.08)  # a mean of prompt means
    assert row.concept.share == pytest.approx(sum(expected_concept) / 12, abs=0.08)
    assert row.text.low <= row.text.share <= row.text.high and row.text.high <= 1.0
    # the same numbers as the probe-judged rule on the same wins, prompt by prompt
    recs = lambda v: [{"concept": "ball", "prompt": q["prompt"], "seed": q["seed"], "text_fidelity": v}  # noqa: E731
                      for q in s.questions]
    only_ann = preference(recs(1.0), recs(0.0), "text")
    assert only_ann.share == 1.0 and only_ann.pairs == 8
    text = table_markdown([row])
    cell = f"{100 * row.text.share:.0f} [{100 * row.text.low:.0f}, {100 * row.text.high:.0f}]"
    assert f"| infusion | ti | {cell} |" in text and text.splitlines()[2].endswith("| 12 | 2 |")


def test_a_pair_without_answers_is_a_row_of_dashes_and_three_arms_give_three_rows(tmp_path):
    arms = ARMS + [{"label": "lora", "entry": "ball-c", "method": "lora"}]
    s = _study(tmp_path, arms=arms, n=6, prompts=2, seeds=(0,))
    q = next(q for q in s.questions if q["pair"] == [0, 2])
    s.answer("ann", q["id"], "left", "left")
    rows = {(r.a, r.b): r for r in table(s)}
    assert set(rows) == {("infusion", "ti"), ("infusion", "lora"), ("ti", "lora")}
    assert rows[("infusion", "ti")].text is None and rows[("infusion", "ti")].answers == 0
    won = rows[("infusion", "lora")].text.share
    assert won == (1.0 if q["left"] == 0 else 0.0)
    assert "| infusion | ti | - | - | 0 | 0 |" in table_markdown(list(rows.values()))


def _cli(argv: list[str]) -> int:
    """``infusion study ...`` through its own parser (the whole CLI imports every command)."""
    parser = argparse.ArgumentParser(prog="infusion")
    study_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_infusion_study_report_prints_the_table_and_writes_csv(tmp_path, capsys):
    assert "infusion.commands.study" in COMMAND_MODULES
    s = _study(tmp_path, n=4)
    for q in s.questions:
        s.answer("ann", q["id"], "left" if q["left"] == 0 else "right", "tie")
    out_csv, out_md = tmp_path / "t2.csv", tmp_path / "t2.md"
    assert _cli(["study", "report", str(s.folder), "--csv", str(out_csv), "--out", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert "| infusion | ti | 100 [100, 100] | 50 [50, 50] | 4 | 1 |" in printed and out_md.read_text() == printed
    [row] = list(csv.DictReader(out_csv.open()))
    assert row["text_preferred"] == "1.0000" and row["concept_preferred"] == "0.5000" and row["answers"] == "4"
    assert write_csv(table(s), tmp_path / "again.csv").read_text() == out_csv.read_text()
    with pytest.raises(ValueError, match="is not a study: it has no study.json"):  # the CLI prints it, no trace
        _cli(["study", "report", str(tmp_path / "nothing")])
