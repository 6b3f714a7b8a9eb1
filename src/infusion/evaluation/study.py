"""A blind A/B study by people: its plan (``study.json``), its answers (``answers.jsonl``) and its Table 2.

A study compares *arms* (library entries of one concept, each trained by a method or with options) pairwise on
the same noise: a question is one pair of arms, one prompt and one seed; the two images are shown side by side,
which arm is on the left drawn with the study's seed and recorded in the plan (``left``: the arm's index). A
participant answers "which follows the text better?" and "which shows your concept better?" with ``left``,
``right`` or ``tie`` ("can't tell"). Answers are appended to ``answers.jsonl`` as they are given (one line each,
flushed and synced), so a reload or a crash loses nothing; a participant's last answer to a question counts.

Table 2 uses the probe-judged table's rule (``evaluation.preference``): a win is 1, a loss 0, "can't tell" 1/2,
the share with a 95% bootstrap interval over (concept, prompt) units (``evaluation.intervals``); a prompt's seeds
and participants move together.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from infusion.evaluation.preference import CRITERIA, Preference, preference

STUDY_FILE = "study.json"
ANSWERS_FILE = "answers.jsonl"
IMAGES = "images"
CHOICES = ("left", "right", "tie")  # "tie": the person can't tell
QUESTIONS = {"text": "Which image follows the text better?", "concept": "Which image shows your concept better?"}
TABLE_CRITERIA = {"text": "text", "concept": "image"}  # our question -> preference.CRITERIA's name
MAX_PARTICIPANT = 64


def plan(n_arms: int, n_prompts: int, seeds: list[int], n_questions: int, seed: int = 0) -> list[dict]:
    """The questions: ``n_questions`` (pair, prompt, seed) triples spread over the pairs of arms in turn, each
    pair's sides balanced (as many left as right, then shuffled), the whole in a shuffled order; all drawn from
    ``random.Random(seed)``. -> ``[{"id", "pair": [i, j], "prompt": k, "seed": s, "left": i or j}]``."""
    pairs = list(itertools.combinations(range(n_arms), 2))
    if not pairs:
        raise ValueError("a study needs at least two library entries to compare")
    per_pair = n_prompts * len(seeds)
    if not 1 <= n_questions <= len(pairs) * per_pair:
        raise ValueError(f"give 1 to {len(pairs) * per_pair} questions ({len(pairs)} pair(s) of entries x "
                         f"{n_prompts} prompts x {len(seeds)} seeds)")
    rng = random.Random(seed)
    pools = []
    for _ in pairs:
        pool = [(k, s) for k in range(n_prompts) for s in seeds]
        rng.shuffle(pool)
        pools.append(pool)
    chosen = [(p, *pools[p][r]) for r in range(per_pair) for p in range(len(pairs))][:n_questions]  # pairs in turn
    sides: dict[int, list[int]] = {}
    for p in range(len(pairs)):
        n = sum(1 for c in chosen if c[0] == p)
        flips = [i % 2 for i in range(n)]  # balanced: each arm of the pair on the left about half the time
        rng.shuffle(flips)
        sides[p] = flips
    questions = []
    for p, k, s in chosen:
        i, j = pairs[p]
        questions.append({"pair": [i, j], "prompt": k, "seed": s, "left": j if sides[p].pop() else i})
    rng.shuffle(questions)
    return [{"id": f"q{n:03d}", **q} for n, q in enumerate(questions)]


@dataclass
class Study:
    """A study folder: ``study.json`` (the plan), ``images/`` (one PNG per arm, prompt and seed), ``answers.jsonl``."""

    folder: Path
    data: dict

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Study:
        folder = Path(folder)
        path = folder / STUDY_FILE if folder.is_dir() else folder
        if not path.is_file():
            raise ValueError(f"{folder} is not a study: it has no {STUDY_FILE}")
        return cls(path.parent, json.loads(path.read_text()))

    @classmethod
    def create(cls, folder: Path, arms: list[dict], concept: str, prompts: list[str], seeds: list[int],
               n_questions: int, settings: dict, seed: int = 0) -> Study:
        """Write a new study's plan. ``arms``: ``{"label", "entry", "method", "version"}`` each (``version``:
        the entry's at creation, ``app.study.entry_version``); ``prompts`` hold
        ``<concept>``; ``settings``: how its images are generated (model, steps, guidance)."""
        if folder.exists():
            raise ValueError(f"a study named {folder.name!r} exists: pick another name")
        questions = plan(len(arms), len(prompts), seeds, n_questions, seed)
        data = {"name": folder.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "concept": concept,
                "arms": arms, "prompts": prompts, "seeds": seeds, "seed": seed, "settings": settings,
                "questions": questions}
        (folder / IMAGES).mkdir(parents=True)
        tmp = folder / (STUDY_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, folder / STUDY_FILE)
        return cls(folder, data)

    @property
    def arms(self) -> list[dict]:
        return self.data["arms"]

    @property
    def questions(self) -> list[dict]:
        return self.data["questions"]

    def question(self, qid: str) -> dict:
        for q in self.questions:
            if q["id"] == qid:
                return q
        raise ValueError(f"study {self.folder.name!r} has no question {qid!r}")

    def image_path(self, arm: int, prompt: int, seed: int) -> Path:
        return self.folder / IMAGES / f"{arm}-{prompt}-{seed}.png"

    def needed_images(self) -> list[tuple[int, int, int]]:
        """(arm, prompt, seed) of every image the questions show, arm by arm (one model loaded at a time)."""
        need = {(a, q["prompt"], q["seed"]) for q in self.questions for a in q["pair"]}
        return sorted(need)

    def missing_images(self) -> list[tuple[int, int, int]]:
        return [k for k in self.needed_images() if not self.image_path(*k).is_file()]

    def shown_prompt(self, q: dict) -> str:
        """The prompt as participants read it: ``<concept>`` as the concept's class phrase."""
        return self.data["prompts"][q["prompt"]].replace("<concept>", self.data["concept"])

    # -- answers ----------------------------------------------------------------------------------
    def answer(self, participant: str, qid: str, text: str, concept: str) -> dict:
        """Append one answer (``CHOICES`` each) to ``answers.jsonl`` and sync it to disk before returning."""
        participant = check_participant(participant)
        q = self.question(qid)
        for what, choice in (("text", text), ("concept", concept)):
            if choice not in CHOICES:
                raise ValueError(f"answer {QUESTIONS[what].lower()!r} with one of {', '.join(CHOICES)}")
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "participant": participant, "question": qid,
                  "left": q["left"], "text": text, "concept": concept}
        with open(self.folder / ANSWERS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    def answers(self) -> list[dict]:
        """Each participant's last answer to each question (a line cut short by a crash is skipped)."""
        path = self.folder / ANSWERS_FILE
        last: dict[tuple[str, str], dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                last[(r["participant"], r["question"])] = r
        return list(last.values())

    def next_question(self, participant: str) -> tuple[dict | None, int]:
        """(the first question ``participant`` has not answered, or None; how many they have answered)."""
        done = {r["question"] for r in self.answers() if r["participant"] == participant}
        todo = [q for q in self.questions if q["id"] not in done]
        return (todo[0] if todo else None), len(self.questions) - len(todo)


def check_participant(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_PARTICIPANT:
        raise ValueError(f"write your name or participant code first (1 to {MAX_PARTICIPANT} characters)")
    return name


# -- Table 2 ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One pair of arms: ``a``'s preference over ``b`` per criterion (None without answers)."""

    a: str
    b: str
    text: Preference | None
    concept: Preference | None
    answers: int
    participants: int


def _records(study: Study, answers: list[dict], pair: list[int], what: str) -> tuple[list[dict], list[dict]]:
    """Answers to ``pair``'s questions as ``preference`` records: the preferred side scores 1, the other 0, a
    "can't tell" 1/2 each (``preference.outcome`` counts that tie as half a win)."""
    key, a, b = CRITERIA[TABLE_CRITERIA[what]], [], []
    for r in answers:
        q = study.question(r["question"])
        if q["pair"] != pair:
            continue
        left_is_a = q["left"] == pair[0]
        win = {"left": 1.0 if left_is_a else 0.0, "right": 0.0 if left_is_a else 1.0, "tie": 0.5}[r[what]]
        unit = {"concept": study.data["concept"], "prompt": q["prompt"], "seed": (q["seed"], r["participant"])}
        a.append({**unit, key: win})
        b.append({**unit, key: 1.0 - win})
    return a, b


def table(study: Study) -> list[Row]:
    """Table 2 of ``study``: one row per pair of arms (first arm over second)."""
    answers, rows = study.answers(), []
    for i, j in itertools.combinations(range(len(study.arms)), 2):
        mine = [r for r in answers if study.question(r["question"])["pair"] == [i, j]]
        prefs = {}
        for what in ("text", "concept"):
            a, b = _records(study, mine, [i, j], what)
            prefs[what] = preference(a, b, TABLE_CRITERIA[what]) if a else None
        rows.append(Row(study.arms[i]["label"], study.arms[j]["label"], prefs["text"], prefs["concept"], len(mine),
                        len({r["participant"] for r in mine})))
    return rows


# the probe-judged Table 2's columns and cells ("54 [41, 66]": % preferred [95% interval]), plus who answered
HEADER = ["A", "against", "text alignment: % preferred", "image alignment (concept): % preferred", "answers",
          "participants"]


def percent_cell(p: Preference | None) -> str:
    return "-" if p is None else f"{100 * p.share:.0f} [{100 * p.low:.0f}, {100 * p.high:.0f}]"


def table_rows(rows: list[Row]) -> list[list[str]]:
    """The table as text cells (``HEADER``'s columns)."""
    return [[r.a, r.b, percent_cell(r.text), percent_cell(r.concept), str(r.answers), str(r.participants)]
            for r in rows]


def table_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    note = ("% preferred: the share of answers preferring A's image over the other's on the same noise, \"can't "
            "tell\" counted as half, with its 95% bootstrap interval over prompts (evaluation.intervals).")
    return "\n".join(lines) + "\n\n" + note + "\n"


CSV_HEADER = ["a", "b", "text_preferred", "text_low", "text_high", "concept_preferred", "concept_low",
              "concept_high", "answers", "participants"]


def write_csv(rows: list[Row], path: str | os.PathLike) -> Path:
    """The table as numbers (shares from 0 to 1; empty without answers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num = lambda p: ["", "", ""] if p is None else [f"{p.share:.4f}", f"{p.low:.4f}", f"{p.high:.4f}"]  # noqa: E731
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        w.writerows([r.a, r.b, *num(r.text), *num(r.concept), r.answers, r.participants] for r in rows)
    return path
