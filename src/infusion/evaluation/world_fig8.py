"""The paper's Fig. 8 on the built-in world: two concepts in one prompt, Infusion (two concept files composed) against
Custom Diffusion composed as its authors do (``methods/custom_diffusion/merge.py``: the closed-form constrained merge
of the two concepts' separately trained folders, their paper's Eq. 5-6).

Per (row, pair) unit: each concept of the pair trains with the row's settings (``Fig8Plan.lrs`` names a row's lr;
otherwise what ``--lr`` omitted gives, and the method's default steps), the row's two outputs are composed (Infusion:
``load_customized(model, [a, b])``; Custom Diffusion: one merged folder) and generate the pair's two-object prompts
(``pair_prompts``: both concepts, other backgrounds and positions) x seeds, the same noise for every row. Each image
is read by the world's probes (``read_objects``): text fidelity of the whole prompt (objects counted), and per named
concept whether its class stands where it is looked for (``present``), whether the object there shows the concept's
look (colour, pattern, second colour: ``look``) and its concept fidelity. One JSON line per image in
``<records>/<row>__<a>+<b>.jsonl`` (the figure's prompts keep their seed-0 image as PNG base64); a unit continues
from its last line. The base model (the prompts with the class phrases) is a reference row.

The table (``fig8_table``) and the figure (``draw_fig8``) are drawn from the records only.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infusion.core.images import make_grid
from infusion.evaluation.intervals import mean_interval
from infusion.evaluation.world_figures import (
    RECOMMENDED_ROW,
    image_of,
    png_b64,
    read_lines,
)
from infusion.evaluation.world_results import (
    BASE_ROW,
    PAPER_ROW,
    Row,
    generate,
    model_fingerprint,
)
from infusion.world import scenes
from infusion.world.concepts import concept_images, eval_prompts, get_concept, hash_name
from infusion.world.fidelity import (
    ObjectLook,
    locate,
    object_embeddings,
    parse_caption,
    read_looks,
    read_scenes,
    slot_box,
    text_fidelity,
)
from infusion.world.scorer import _to_tensor

CD_ROW = "custom-diffusion"
CD_TUNED_ROW = "custom-diffusion-lr4e-4"
FIG8_ROWS = (
    Row(BASE_ROW, ""),  # the base model on the class phrases: what no customisation gives
    Row(PAPER_ROW, "infusion", {}),
    Row(RECOMMENDED_ROW, "infusion", {"preset": "recommended"}),
    Row(CD_ROW, "custom-diffusion", {}),
    # Custom Diffusion at the higher of the two learning rates its Table 1 sweep tries (10x its default 4e-5): where it
    # learns a concept's look alone on the world; its default learns none (look rate 0.00 in Table 1)
    Row(CD_TUNED_ROW, "custom-diffusion", {}),
)
LABELS = {BASE_ROW: "base (class words)", PAPER_ROW: "Infusion (paper)", RECOMMENDED_ROW: "Infusion (recommended)",
          CD_ROW: "Custom Diffusion (merged)", CD_TUNED_ROW: "Custom Diffusion lr 4e-4 (merged)"}


@dataclass(frozen=True)
class Fig8Plan:
    """What Fig. 8 covers; ``small`` is the test suite's plumbing check."""

    pairs: tuple = (("sunball", "halfmug"), ("slashbox", "duotree"), ("halfstar", "sunball"))
    rows: tuple = FIG8_ROWS
    lrs: dict = field(default_factory=lambda: {CD_TUNED_ROW: 4e-4})  # rows trained at a named lr
    prompts: int = 8  # per pair
    seeds: int = 2
    shown: int = 4  # prompts per pair in the figure (seed 0)
    solo: int = 4  # control: each concept alone in the same composed model, its first test prompts x seeds
    steps: int | None = None  # None: each method's default


FIG8_PLANS = {
    "full": Fig8Plan(),
    "small": Fig8Plan(pairs=(("sunball", "halfmug"),), rows=(FIG8_ROWS[0], FIG8_ROWS[1],
                                                             Row(CD_ROW, "custom-diffusion", {"num_class_images": 2,
                                                                                              "prior_steps": 2})),
                      prompts=2, seeds=1, shown=2, steps=1, solo=1),
}


def pair_key(pair) -> str:
    return "+".join(pair)


def pair_prompts(pair, n: int) -> list[str]:
    """``n`` prompts naming both concepts of ``pair``: first the bare pair, then other backgrounds, then the two at
    named corners (positions and backgrounds drawn from a stream seeded by the pair's names: the same every run)."""
    a, b = (get_concept(c) for c in pair)
    rng = random.Random(hash_name(pair_key(pair)))
    ta, tb = f"<{a.name}>", f"<{b.name}>"
    bgs = [x for x in scenes.BACKGROUNDS if x not in (a.background, b.background)]
    bg = lambda x: scenes.BACKGROUND_PHRASES[x][0]
    pos = lambda x: scenes.POSITION_PHRASES[x][0]
    out = [f"a photo of a {ta} and a {tb}"]
    for x in rng.sample(bgs, 3):
        out.append(f"a {ta} and a {tb} {bg(x)}")
    corners = [(p, q) for p in scenes.CORNERS for q in scenes.CORNERS if p != q]
    rng.shuffle(corners)
    for p, q in corners:
        if len(out) >= n:
            break
        out.append(f"a {ta} {pos(p)} and a {tb} {pos(q)}, {bg(rng.choice(bgs))}")
    return out[:n]


# ----------------------------------------------------------------------------- reading the objects


class PairReader:
    """Reads a generated world image with two named concepts: text fidelity, and per concept presence, look and
    concept fidelity at the object's slot (its named corner, else the slot most likely to hold its class)."""

    def __init__(self, scorer):
        self.scorer = scorer  # a WorldProbeScorer (its probes)
        self._refs: dict[str, torch.Tensor] = {}

    def reference(self, concept) -> torch.Tensor:
        """The mean ObjectProbe embedding (128,) of the concept's training images' objects (as the scorer's)."""
        if concept.name not in self._refs:
            rx = _to_tensor(concept_images(concept.name), scenes.IMAGE_SIZE)
            boxes = [slot_box(r, locate(r, {"cls": concept.obj.cls})) for r in read_scenes(self.scorer.scene_probe, rx)]
            self._refs[concept.name] = F.normalize(object_embeddings(self.scorer.object_probe, rx, boxes).mean(0), dim=0)
        return self._refs[concept.name]

    @torch.no_grad()
    def read(self, images, texts: list[str], concepts) -> list[dict]:
        """One dict per image: ``text_fidelity`` and ``objects``: {name: {present, look, look_read, concept_fidelity}}.
        texts: the prompts with each ``<name>`` replaced by its class phrase."""
        x = _to_tensor(images, scenes.IMAGE_SIZE)
        readings = read_scenes(self.scorer.scene_probe, x)
        out = []
        for i, (r, t) in enumerate(zip(readings, texts)):
            named = parse_caption(t)
            objs = {}
            for c in concepts:
                obj = next((o for o in named.objects if o["cls"] == c.obj.cls), {"cls": c.obj.cls})
                s = locate(r, obj)
                if r.cls[s] != c.obj.cls:  # not at its named corner: where its class most likely is
                    s = locate(r, {"cls": c.obj.cls})
                look = read_looks(self.scorer.object_probe, x[i : i + 1], [slot_box(r, s)])[0]
                emb = object_embeddings(self.scorer.object_probe, x[i : i + 1], [slot_box(r, s)])[0]
                objs[c.name] = {"present": r.cls[s] == c.obj.cls, "look": look == ObjectLook.of(c.obj),
                                "look_read": look.describe(), "concept_fidelity": round(float(emb @ self.reference(c)), 4)}
            out.append({"text_fidelity": round(text_fidelity(r, named), 4), "objects": objs})
        return out


# ----------------------------------------------------------------------------- the run


class Fig8Run:
    """The Fig. 8 units of one ``ResultsRun`` (its training, loading, generation settings and probes)."""

    def __init__(self, run, plan: Fig8Plan, records: str | Path):
        self.run, self.plan, self.records = run, plan, Path(records)
        self.records.mkdir(parents=True, exist_ok=True)
        self._reader = None
        mark, here = self.records / "model_fingerprint.txt", model_fingerprint(run.preset.model)
        if mark.is_file() and mark.read_text().strip() != here:
            raise ValueError(f"{self.records} holds records of model {mark.read_text().strip()}, not of {here}: "
                             "move that folder aside to start this model's Fig. 8")
        mark.write_text(here + "\n")

    @property
    def reader(self) -> PairReader:
        if self._reader is None:
            self._reader = PairReader(self.run.reader.scorer)
        return self._reader

    def units(self) -> list[tuple]:
        """(row, pair), pair by pair (the first pair complete for every row first)."""
        return [(r, p) for p in self.plan.pairs for r in self.plan.rows]

    def path(self, row: Row, pair, solo: bool = False) -> Path:
        return self.records / f"{row.name}__{pair_key(pair)}{'__solo' if solo else ''}.jsonl"

    def run_all(self, stop_at: float | None = None) -> None:
        """Every unit the records lack (``stop_at``: a ``time.time()`` after which no new unit starts)."""
        for row, pair in self.units():
            if stop_at is not None and time.time() > stop_at:
                self.run.log("fig8: time is up; the records resume here")
                return
            unit = f"fig8/{row.name}/{pair_key(pair)}"
            if self._complete(row, pair) or not self.run.claim(unit):
                continue
            self.run.log(f"[{time.strftime('%H:%M:%S')}] {unit}")
            try:
                self.unit(row, pair)
            finally:
                self.run.release(unit)

    def _complete(self, row: Row, pair) -> bool:
        p = self.plan
        return (len(read_lines(self.path(row, pair))) >= p.prompts * p.seeds
                and len(read_lines(self.path(row, pair, solo=True))) >= len(pair) * p.solo * p.seeds)

    def generator(self, row: Row, pair):
        """The row's model with both concepts of ``pair`` loaded, and its training/merge cost record."""
        run, plan = self.run, self.plan
        if row.name == BASE_ROW:
            return run.load(None), {}
        concepts = [get_concept(c) for c in pair]
        lr = plan.lrs.get(row.name)
        tag = "fig8" if lr is None else f"fig8-lr{lr:g}"
        recs = [run.train(row, c, tag, lr=lr, steps=plan.steps) for c in concepts]
        cost = {"train_seconds": [round(r["seconds"], 1) for r in recs], "steps": [r["steps"] for r in recs],
                "file_bytes": [r["file_bytes"] for r in recs], "lr": lr}
        files = [r["out"] for r in recs]
        from infusion.customized import load_customized
        from infusion.methods.registry import customization_class

        kind = customization_class(row.method, files[0])
        if not kind.composable:  # Custom Diffusion: its authors' merge of the two folders into one
            from infusion.methods.custom_diffusion.merge import merge_folders

            merged = run.out / "runs" / row.name / "fig8-merged" / f"{pair_key(pair)}-{tag}"
            if not (merged / "infusion.json").is_file():
                t0 = time.time()
                merge_folders(run.preset.model, files, merged, pipe=run.base_pipe())
                cost["merge_seconds"] = round(time.time() - t0, 1)
            files = [str(merged)]
            cost["merged_bytes"] = sum(p.stat().st_size for p in merged.iterdir())
        gen = load_customized(run.base_pipe() if kind.keeps_base_weights else run.preset.model, files)
        gen.pipe.set_progress_bar_config(disable=True)
        return gen, cost

    def unit(self, row: Row, pair) -> None:
        plan, run = self.plan, self.run
        path = self.path(row, pair)
        done = {(line["prompt"], line["seed"]) for line in read_lines(path)}
        prompts = pair_prompts(pair, plan.prompts)
        seeds = list(range(plan.seeds))
        todo = [p for p in prompts if any((p, s) not in done for s in seeds)]
        solo_done = {(line["solo"], line["prompt"], line["seed"]) for line in read_lines(self.path(row, pair, True))}
        solo_todo = [(c, p) for c in pair for p in eval_prompts(c)[: plan.solo]
                     if any((c, p, s) not in solo_done for s in seeds)]
        if not todo and not solo_todo:
            return
        concepts = [get_concept(c) for c in pair]
        sub = lambda q: q.replace(f"<{concepts[0].name}>", concepts[0].class_phrase).replace(
            f"<{concepts[1].name}>", concepts[1].class_phrase)
        gen, cost = self.generator(row, pair)
        for c, p in solo_todo:  # the control: each concept by itself, same model, same noise in every row
            images = generate(gen, [sub(p) if row.name == BASE_ROW else p], seeds, run.preset)
            reads = self.reader.read(images, [sub(p)] * len(images), [get_concept(c)])
            with self.path(row, pair, True).open("a") as f:
                for s, rd in zip(seeds, reads):
                    if (c, p, s) not in solo_done:
                        f.write(json.dumps({"row": row.name, "pair": list(pair), "solo": c, "prompt": p, "seed": s,
                                            **rd}) + "\n")
        shown = set(prompts[: plan.shown])
        for p in todo:
            t0 = time.time()
            images = generate(gen, [sub(p) if row.name == BASE_ROW else p], seeds, run.preset)
            sec = (time.time() - t0) / len(images)
            reads = self.reader.read(images, [sub(p)] * len(images), concepts)
            with path.open("a") as f:  # one unit per process (the run's locks): appends do not interleave
                for s, im, rd in zip(seeds, images, reads):
                    if (p, s) in done:
                        continue
                    line = {"row": row.name, "pair": list(pair), "prompt": p, "seed": s, **rd,
                            "seconds_per_image": round(sec, 3)}
                    if cost:
                        line["cost"] = cost
                    if p in shown and s == 0:
                        line["png"] = png_b64(im)
                    f.write(json.dumps(line) + "\n")


# ----------------------------------------------------------------------------- table and figure


def load_fig8(records: str | Path, plan: Fig8Plan) -> dict:
    """{(row, pair key): [lines]} from the record files."""
    out = {}
    for r in plan.rows:
        for p in plan.pairs:
            lines = read_lines(Path(records) / f"{r.name}__{pair_key(p)}.jsonl")
            if lines:
                out[(r.name, pair_key(p))] = lines
    return out


def _per_prompt(lines: list[dict], value) -> list[float]:
    """Per prompt, the mean of ``value(line)`` over its seeds (a prompt's seeds move together in the bootstrap)."""
    by: dict[str, list[float]] = {}
    for line in lines:
        by.setdefault(line["prompt"], []).append(float(value(line)))
    return [float(np.mean(v)) for v in by.values()]


METRICS = (
    ("both_looks", "both looks", lambda ln, a, b: ln["objects"][a]["look"] and ln["objects"][b]["look"]
     and ln["objects"][a]["present"] and ln["objects"][b]["present"]),
    ("look_first", "look of 1st", lambda ln, a, b: ln["objects"][a]["look"] and ln["objects"][a]["present"]),
    ("look_second", "look of 2nd", lambda ln, a, b: ln["objects"][b]["look"] and ln["objects"][b]["present"]),
    ("both_present", "both objects there", lambda ln, a, b: ln["objects"][a]["present"] and ln["objects"][b]["present"]),
    ("text_fidelity", "text fidelity", lambda ln, a, b: ln["text_fidelity"]),
    ("concept_fidelity", "concept fidelity (mean of the two)",
     lambda ln, a, b: (ln["objects"][a]["concept_fidelity"] + ln["objects"][b]["concept_fidelity"]) / 2),
)


def fig8_table(records: str | Path, plan: Fig8Plan) -> dict:
    """{row: {metric: (estimate, low, high), "n_images": n, "pairs": [...]}} over the pairs every row has complete
    records for (strata: pairs; units: (pair, prompt)); and per pair {row: {metric: estimate}}."""
    got = load_fig8(records, plan)
    need = plan.prompts * plan.seeds
    pairs = [pair_key(p) for p in plan.pairs
             if all(len(got.get((r.name, pair_key(p)), [])) >= need for r in plan.rows)]
    table, per_pair = {}, {}
    for r in plan.rows:
        if not pairs:
            break
        row = {"pairs": pairs, "n_images": sum(len(got[(r.name, p)]) for p in pairs)}
        for key, _, f in METRICS:
            vals = [_per_prompt(got[(r.name, p)], lambda ln, p=p, f=f: f(ln, *p.split("+"))) for p in pairs]
            row[key] = mean_interval(vals)
            for p, v in zip(pairs, vals):
                per_pair.setdefault(p, {}).setdefault(r.name, {})[key] = float(np.mean(v))
        vals = [[v for c in p.split("+") for v in _per_prompt(
                    [ln for ln in read_lines(Path(records) / f"{r.name}__{p}__solo.jsonl") if ln["solo"] == c],
                    lambda ln, c=c: ln["objects"][c]["look"] and ln["objects"][c]["present"])] for p in pairs]
        if all(len(v) >= 2 * plan.solo for v in vals):  # the control's records are complete
            row["look_alone"] = mean_interval(vals)
            for p, v in zip(pairs, vals):
                per_pair[p][r.name]["look_alone"] = float(np.mean(v))
        table[r.name] = row
    return {"table": table, "per_pair": per_pair}


def _in_plan_order(rows: dict) -> list:
    """``rows`` items in FIG8_ROWS's order (fig8.json sorts its keys; the table and fig8.png show one order)."""
    order = [r.name for r in FIG8_ROWS]
    return sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


ROW_NOTES = {CD_TUNED_ROW: "each concept trained at lr 4e-4, ten times Custom Diffusion's default 4e-5 (the higher of "
                           "the two learning rates Table 1's sweep tries), where it learns a concept's look alone; its "
                           "default learns none on the world"}


def table_lines(result: dict) -> list[str]:
    """The table as Markdown lines, rows in the plan's order, then what each row not self-explaining is."""
    table = result["table"]
    if not table:
        return ["(no pair has records for every row yet)"]
    pairs = next(iter(table.values()))["pairs"]
    cols = [(k, label) for k, label, _ in METRICS] + [("look_alone", "control: look, each concept alone")]
    head = "| row | " + " | ".join(label for _, label in cols) + " | images |"
    lines = [(f"Pairs: {', '.join(pairs)} (1st and 2nd: the concepts in the order a pair names them); mean over pairs, "
              "[95% bootstrap over (pair, prompt)]. A concept's look is read on the object of its class: at the corner "
              "the prompt puts it in, or, where the prompt names no corner, wherever an object of its class most likely "
              "is. The control: the same composed model on each concept's first test prompts, one concept named."), "",
             head, "|" + "---|" * (len(cols) + 2)]
    fmt = lambda v: f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" if v else "-"
    for name, row in _in_plan_order(table):
        cells = [fmt(row.get(k)) for k, _ in cols]
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + f" | {row['n_images']} |")
    lines += [""] + [f"- {LABELS.get(r, r)}: {note}." for r, note in ROW_NOTES.items() if r in table]
    lines += ["", ("In fig8.png the corner of each image says which looks the probes read there: 1 (the first "
              "concept's), 2 (the second's), - (neither)."), "",
              "Per pair (both looks / look of 1st / look of 2nd / text fidelity):", ""]
    for p, rows in result["per_pair"].items():
        lines.append(f"- {p}: " + "; ".join(
            f"{LABELS.get(r, r)} {v['both_looks']:.2f} / {v['look_first']:.2f} / {v['look_second']:.2f} / "
            f"{v['text_fidelity']:.2f}" for r, v in _in_plan_order(rows)))
    return lines


def readings(result: dict) -> list[str]:
    """What the table says about the paper's Fig. 8 claim (Infusion keeps both concepts where Custom Diffusion
    overlooks one): the rows whose both-looks interval lies above 0, and where the world differs from the paper."""
    table = result["table"]
    if not table:
        return []
    composes = [r for r, row in _in_plan_order(table) if row["both_looks"][1] > 0]
    name = lambda r: LABELS.get(r, r)  # noqa: E731
    rest = [f"{name(r)} {row['both_looks'][0]:.2f}" for r, row in _in_plan_order(table) if r not in composes]
    out = ["- Both looks in one image, interval above 0: "
           + (", ".join(f"{name(r)} {table[r]['both_looks'][0]:.2f}" for r in composes) or "no row")
           + (f"; interval reaching 0: {', '.join(rest)}." if rest else ".")]
    paper = table.get(PAPER_ROW)
    if paper is not None and PAPER_ROW not in composes:
        alone = paper.get("look_alone")
        cd = [table[r]["both_looks"][0] for r in (CD_ROW, CD_TUNED_ROW) if r in table]
        out.append("- **Where the world differs from the paper**: the paper's Infusion composes both looks in "
                   f"{paper['both_looks'][0]:.2f} of the images"
                   + (f" (Custom Diffusion: {max(cd):.2f} at best)" if cd else "") + "; it learns little of a "
                   "look on the world even alone"
                   + (f" (control {alone[0]:.2f}; Table 1)" if alone else " (Table 1)") + ", so there is little to compose. "
                   + (f"{name(RECOMMENDED_ROW)} composes both in {table[RECOMMENDED_ROW]['both_looks'][0]:.2f}."
                      if RECOMMENDED_ROW in composes else ""))
    return out


def draw_fig8(records: str | Path, plan: Fig8Plan, path: str | Path, cell: int = 64) -> Path | None:
    """Fig. 8: per pair a block, rows the methods, columns the pair's first ``shown`` prompts (seed 0, the same
    noise in every row); under each image the looks read (1: look of the first concept, 2: of the second)."""
    import PIL.Image
    import PIL.ImageDraw

    got = load_fig8(records, plan)
    blocks = []
    for pair in plan.pairs:
        k = pair_key(pair)
        rows, labels, cols = [], [], None
        for r in plan.rows:
            lines = {ln["prompt"]: ln for ln in got.get((r.name, k), []) if "png" in ln}
            prompts = pair_prompts(pair, plan.prompts)[: plan.shown]
            if not all(p in lines for p in prompts):
                continue
            cols = cols or [p for p in prompts]
            ims = []
            for p in prompts:
                im = image_of(lines[p]["png"]).resize((cell, cell), PIL.Image.NEAREST)
                marks = "".join(str(i + 1) for i, c in enumerate(pair)
                                if lines[p]["objects"][c]["look"] and lines[p]["objects"][c]["present"])
                d = PIL.ImageDraw.Draw(im)
                d.rectangle([0, cell - 11, 6 * max(1, len(marks)) + 4, cell], fill="white")
                d.text((2, cell - 11), marks or "-", fill="black")
                ims.append(im)
            rows.append(ims)
            labels.append(LABELS.get(r.name, r.name))
        if rows:
            blocks.append(make_grid(rows, col_labels=cols, row_labels=labels, cell=cell))
    if not blocks:
        return None
    w = max(b.width for b in blocks)
    canvas = PIL.Image.new("RGB", (w, sum(b.height + 8 for b in blocks)), "white")
    y = 0
    for b in blocks:
        canvas.paste(b, (0, y))
        y += b.height + 8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    if path.stat().st_size > 300_000:  # the repository's picture budget: 256 colours lose nothing that matters here
        canvas.quantize(256).save(path, optimize=True)
    return path


def run_fig8(preset: str, model: str | None, out: Path, doc: Path, report_only: bool, stop_at: float | None = None) -> int:
    """``infusion results --stage fig8``: train, merge, generate and read what the records lack (one process), then
    the table (``fig8.md``) and the figure (``fig8.png``) beside the page's other figures."""
    from infusion.evaluation.world_results import PRESETS, ResultsRun

    plan = FIG8_PLANS[preset]
    records = doc.parent / "results" / "records" / "fig8"
    if not report_only:
        torch.set_num_threads(1)
        p = PRESETS[preset]
        if model:
            p.model = model
        run = ResultsRun(out, p, log=lambda m: print(m, flush=True))
        Fig8Run(run, plan, records).run_all(stop_at)
    result = fig8_table(records, plan)
    fig_dir = doc.parent / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    (fig_dir / "fig8.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    (fig_dir / "fig8.md").write_text("# Fig. 8 on the world: two concepts in one prompt\n\n"
                                     + "\n".join(table_lines(result) + [""] + readings(result)) + "\n")
    png = draw_fig8(records, plan, fig_dir / "fig8.png")
    for path in (fig_dir / "fig8.md", fig_dir / "fig8.json", png):
        if path:
            print(f"wrote {path}")
    return 0
