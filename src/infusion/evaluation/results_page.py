"""The results page: the paper's evaluation on the built-in world, one resumable command -> docs/results.md.

    infusion results --workers 2            # Table 1, Table 2, Fig. 7 (resumes; two processes share the work list)
    infusion results --stage figures        # Figs. 9-11: W2 and LFD against training steps, images along training
    infusion results --stage fig8           # Fig. 8: two concepts in one prompt
    infusion results --report-only          # rewrite the page from the records so far
    infusion results --preset small --model tiny --out /tmp/r --doc /tmp/r/results.md   # plumbing

Work (``infusion.evaluation.world_results``): per concept and row, defaults as ``infusion train`` gives them, a
learning-rate x steps sweep scored on validation prompts, the chosen point scored on the test prompts
(docs/protocol.md). Every finished unit is a record; the records are also written into the results JSON beside
the page, and a later run (another session, a fresh clone) starts from that JSON if it was measured on the same
model under the same protocol, so only what is missing is trained and scored. The page itself is
``evaluation.world_page``'s, from records only.

``infusion results`` (``infusion.commands.results``) registers ``add_arguments`` and calls ``run_results``;
``main(argv)`` is the same command as a function.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import sys
import time
from pathlib import Path

import torch

from infusion.evaluation.world_figures import FIGURE_PLANS, FigureRun, draw_curves, draw_fig11
from infusion.evaluation.world_page import write_page
from infusion.evaluation.world_results import PRESETS, PROTOCOL, Records, ResultsRun, model_fingerprint

DESCRIPTION = "The paper's evaluation on the built-in world: one resumable command -> docs/results.md."
WORK = {"table": "runs/results_table", "figures": "runs/results_figures", "fig8": "runs/results_fig8"}  # --out


def _worker(preset_name: str, model: str | None, out: str, figures: str | None = None,
            images: str | None = None) -> None:
    """One process's share of the work list (the records say what is done; processes share them); ``figures``: the
    folder of the figure records (the figures stage instead of the table); ``images``: the folder of the table's
    per-image records."""
    torch.set_num_threads(1)
    quiet_library_bars()
    preset = PRESETS[preset_name]
    if model:
        preset.model = model
    run = ResultsRun(out, preset, log=lambda m: print(m, flush=True), image_records=images)
    if figures is None:
        run.run()
    else:
        fr = FigureRun(run, FIGURE_PLANS[preset_name], figures)
        run.run(units=fr.units(), handlers={"figures": fr.unit})


def quiet_library_bars() -> None:
    """No per-load progress bars from diffusers, transformers and the hub in a long run's log (one line per unit
    is what a nohup file should get)."""
    import diffusers
    import huggingface_hub
    import transformers

    huggingface_hub.utils.disable_progress_bars()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def figures_dir(doc: Path) -> Path:
    """Where the figure stage's records go: beside the page's figures, committed with them."""
    return doc.parent / "results" / "records" / "figures"


def run_figures(preset: str, model: str | None, out: Path, doc: Path, workers: int, report_only: bool) -> int:
    """The figures stage: Figs. 9-11 (``evaluation.world_figures``) from its records, training and scoring what they
    lack first unless ``report_only``."""
    plan, records = FIGURE_PLANS[preset], figures_dir(doc)
    if not report_only:
        own_work_folder(out, model_fingerprint(model or PRESETS[preset].model))
        args = (preset, model, str(out), str(records))
        if workers <= 1:
            _worker(*args)
        else:
            procs = [mp.get_context("spawn").Process(target=_worker, args=args, daemon=True) for _ in range(workers)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
    fig_dir = doc.parent / "results"
    written = draw_curves(records, plan, fig_dir, PRESETS[preset].test_seeds) + draw_fig11(records, plan, fig_dir)
    for path in written:
        print(f"wrote {path}")
    return 0


def seed_records(out: Path, results_json: Path, fingerprint: str) -> int:
    """Records from a committed results JSON that the work folder lacks (resume across sessions), if they were
    measured on this model (``fingerprint``); records of another model are not used."""
    if not results_json.is_file():
        return 0
    data = json.loads(results_json.read_text())
    if data.get("model_fingerprint") != fingerprint:
        print(f"{results_json}: records of model {data.get('model_fingerprint')}, this is {fingerprint}: not resumed")
        return 0
    if data.get("protocol") != PROTOCOL:
        print(f"{results_json}: records of protocol {data.get('protocol', 1)}, this is {PROTOCOL}: not resumed")
        return 0
    have = Records(out)
    n = 0
    for key, value in data.get("records", {}).items():
        # train/ records are kept too (configs, seconds, sizes: the JSON stays complete); their outputs are not
        # committed, and Runner.train trains again when a record's output is missing
        if have.get(key) is None:
            have.put(key, value)
            n += 1
    return n


def own_work_folder(out: Path, fingerprint: str, protocol: int | None = None) -> None:
    """Move the records of another model (or, given ``protocol``, of another protocol) aside
    (``out/records-<fingerprint>``): a retrained model or a changed protocol starts afresh."""
    mark, pmark = out / "model_fingerprint.txt", out / "protocol.txt"
    old = mark.read_text().strip() if mark.is_file() else None
    old_p = int(pmark.read_text()) if pmark.is_file() else 1
    stale = old != fingerprint or (protocol is not None and old_p != protocol)
    if stale and (out / "records").is_dir() and any((out / "records").iterdir()):
        aside = f"records-{old or 'unknown'}" + ("" if old != fingerprint else f"-protocol{old_p}")
        (out / "records").rename(out / aside)
        print(f"{out}/records were measured on model {old}, protocol {old_p}: moved aside")
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(fingerprint + "\n")
    if protocol is not None:
        pmark.write_text(f"{protocol}\n")


def build_report(out: Path, preset, doc: Path, wall: list, fingerprint: str) -> dict:
    """The page (``evaluation.world_page``) and its JSON from the records; returns the JSON (its ``errors``: what the
    command reports, e.g. a Fig. 7 grid missing a row the table has)."""
    rec = Records(out).all()
    mlm_rows = {r.name for r in preset.rows if r.mlm_lambda}
    tables, errors = write_page(doc, preset, rec, wall, fingerprint, mlm_rows)
    data = {"preset": preset.__class__.__name__, "model": preset.model, "model_fingerprint": fingerprint,
            "protocol": PROTOCOL, "wall_seconds": wall, **tables, "records": rec}
    (doc.parent / "results" / "results.json").write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return data


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The command's options (``infusion results`` and ``main``)."""
    ap.add_argument("--preset", default="full", choices=["full", "small"],
                    help="full: the protocol (docs/protocol.md); small: a minutes-long plumbing run")
    ap.add_argument("--model", default=None, help="override the preset's model (e.g. tiny, or a world snapshot folder)")
    ap.add_argument("--out", default=None, help="work folder (training outputs, records); default: one per stage, "
                    + ", ".join(f"{k}: {v}" for k, v in WORK.items()))
    ap.add_argument("--doc", default="docs/results.md", help="the page to write; its figures and JSON go beside it in results/")
    ap.add_argument("--workers", type=int, default=1, help="processes (one per core; they share the work list)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the doc from the records")
    ap.add_argument("--stage", default="table", choices=["table", "figures", "fig8"],
                    help="table: Tables 1-2, Fig. 7 and the page; figures: Figs. 9-11 (W2 and LFD against training "
                         "steps, images at steps), records in <doc folder>/results/records/figures/; fig8: Fig. 8 "
                         "(two concepts in one prompt, Infusion against Custom Diffusion's merge; one process), "
                         "records in <doc folder>/results/records/fig8/")


def run_results(preset: str = "full", model: str | None = None, out: str | None = None,
                doc: str = "docs/results.md", workers: int = 1, report_only: bool = False, stage: str = "table") -> int:
    """Train and score what the records lack (``workers`` processes), then write the page ``doc``, its figures and
    its JSON (``doc``'s folder/results/); ``report_only``: only the page, from the records so far. ``stage``
    ``figures``: Figs. 9-11 instead (``run_figures``); ``fig8``: Fig. 8. ``out``: the stage's work folder
    (``WORK``)."""
    out = out or WORK[stage]
    if stage == "figures":
        return run_figures(preset, model, Path(out), Path(doc), workers, report_only)
    if stage == "fig8":  # Fig. 8 (evaluation.world_fig8), one process
        from infusion.evaluation.world_fig8 import run_fig8

        return run_fig8(preset, model, Path(out), Path(doc), report_only)
    preset_name = preset
    preset = PRESETS[preset_name]
    if model:
        preset.model = model
    out, doc = Path(out), Path(doc)
    results_json = doc.parent / "results" / "results.json"
    fingerprint = model_fingerprint(preset.model)
    committed = json.loads(results_json.read_text()) if results_json.is_file() else {}
    if report_only:  # the page reports the records' model, which may not be the model installed now
        mark = out / "model_fingerprint.txt"
        measured = mark.read_text().strip() if mark.is_file() else committed.get("model_fingerprint", fingerprint)
        if measured != fingerprint:
            print(f"the records were measured on model {measured}, not on the installed {fingerprint}: "
                  f"the page reports them as model {measured}'s; a full run starts the installed model's afresh")
        fingerprint = measured
    # the wall time belongs to the records: a retrained model's run starts its own
    same = committed.get("model_fingerprint") == fingerprint and committed.get("protocol") == PROTOCOL
    wall = committed.get("wall_seconds", []) if same else []
    if not report_only:
        own_work_folder(out, fingerprint, PROTOCOL)
    n = seed_records(out, results_json, fingerprint)
    if n:
        print(f"resuming: {n} records from {results_json}")
    if not report_only:
        t0 = time.time()
        images = str(doc.parent / "results" / "records" / "table")
        if workers <= 1:
            _worker(preset_name, model, str(out), None, images)
        else:
            procs = [mp.get_context("spawn").Process(target=_worker, daemon=True,
                                                     args=(preset_name, model, str(out), None, images))
                     for k in range(workers)]
            for p in procs:
                p.start()

            def stop(signum, frame):  # `kill` of this process stops its workers too
                for p in procs:
                    p.terminate()
                sys.exit(128 + signum)

            signal.signal(signal.SIGTERM, stop)
            for p in procs:
                p.join()
        wall.append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)), "seconds": time.time() - t0,
                     "workers": workers})
    data = build_report(out, preset, doc, wall, fingerprint)
    print(f"wrote {doc}")
    return 1 if data["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    """``infusion results ARGV`` as a function (scripts, tests)."""
    ap = argparse.ArgumentParser(prog="infusion results", description=DESCRIPTION,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(ap)
    return run_results(**vars(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
