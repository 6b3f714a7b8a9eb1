"""The evaluation harness on the tiny model: output schema, LFD/W2 wiring, determinism, resume."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infusion.methods.infusion.concept import Concept
from infusion.evaluation import EvalConfig, build_jobs, discover_entries, dreambench_prompts, prompts_for, run_evaluation
from infusion.metrics import FunctionScorer
from infusion.methods.infusion.processor import layer_widths
from infusion.core.model_configs import tiny_sd_pipeline


def _brightness(images, texts):
    return [float(np.asarray(im, dtype=np.float64).mean() / 255) for im in images]


def _ref_distance(images, refs):
    r = np.mean([np.asarray(x.resize((16, 16)), dtype=np.float64) for x in refs], axis=0)
    return [float(-np.abs(np.asarray(im, dtype=np.float64) - r).mean()) for im in images]


SCORERS = [FunctionScorer("toy", text_fn=_brightness, image_fn=_ref_distance)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    refs = root / "refs"
    refs.mkdir()
    for i in range(2):
        Image.new("RGB", (20, 20), (200, 40 * i, 10)).save(refs / f"{i}.png")
    lfd = root / "lfd"
    lfd.mkdir()
    with open(lfd / "metadata.jsonl", "w") as f:
        for i, cap in enumerate(["a photo of a dog", "a red car", "a tree"]):
            Image.new("RGB", (16, 16), (30 * i, 90, 20)).save(lfd / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": cap}) + "\n")
    prompts = root / "prompts.txt"
    prompts.write_text("a {} on the beach\n# comment\na red {}\n")
    widths = layer_widths(tiny_sd_pipeline().unet)
    gen = torch.Generator().manual_seed(0)
    files = root / "concepts"
    training = {"steps": 4, "images": str(refs)}
    Concept("mycat", "cat", {k: 2.0 * torch.randn(1, d, generator=gen) for k, d in widths.items()}, training=training).save(files / "mycat.safetensors")
    Concept("mycat", "cat", {k: torch.zeros(1, d) for k, d in widths.items()}, training=training).save(files / "mycat-step2.safetensors")
    return root, files / "mycat.safetensors", prompts, lfd


def _cfg(setup, out, **kw):
    root, file, prompts, lfd = setup
    args = dict(model="tiny", files=[str(file)], out=str(out), prompts=str(prompts), images_per_prompt=2, steps=2,
                guidance=2.0, batch_size=3, checkpoints=True, lfd_data=str(lfd), lfd_samples=3)
    args.update(kw)
    return EvalConfig(**args)


def test_dreambench_prompts_are_packaged():
    objs, live = dreambench_prompts("x", "object"), dreambench_prompts("x", "live")
    assert len(objs) == len(live) == 25
    assert objs[0] == "a <x> in the jungle" and live[10] == "a <x> wearing a red hat"
    assert prompts_for("rex", "dog")[10] == "a <rex> wearing a red hat"  # live subjects get live prompts
    with pytest.raises(ValueError, match="unknown prompt set"):
        prompts_for("x", "cat", "nonsense")


def test_entries_and_jobs(setup, tmp_path):
    cfg = _cfg(setup, tmp_path)
    entries = discover_entries(cfg)
    assert [(e.method, e.step) for e in entries] == [("infusion", 4), ("infusion", 2)]
    # two runs (folders, as Custom Diffusion writes) whose names differ only after a dot: two labels,
    # each with its own checkpoint
    runs = tmp_path / "runs"
    meta = json.dumps({"method": "custom-diffusion", "name": "mycat", "class_phrase": "cat", "training": json.dumps({"steps": 4})})
    for name in ("mycat-lambda0.001", "mycat-lambda0.0001"):
        for suffix in ("", "-step2"):
            (runs / (name + suffix)).mkdir(parents=True)
            (runs / (name + suffix) / "infusion.json").write_text(meta)
    dotted = discover_entries(_cfg(setup, tmp_path, files=[str(runs / "mycat-lambda0.001"), str(runs / "mycat-lambda0.0001")]))
    assert sorted((e.label, Path(e.path).name, e.step) for e in dotted) == [
        ("custom-diffusion:mycat-lambda0.0001", "mycat-lambda0.0001", 4),
        ("custom-diffusion:mycat-lambda0.0001", "mycat-lambda0.0001-step2", 2),
        ("custom-diffusion:mycat-lambda0.001", "mycat-lambda0.001", 4),
        ("custom-diffusion:mycat-lambda0.001", "mycat-lambda0.001-step2", 2),
    ]
    jobs = build_jobs(cfg, entries)
    # 2 models x 2 prompts x 2 seeds, plus base images of the 2 class-phrase prompts x 2 seeds
    assert len(jobs) == 8 + 4 and len({j.key for j in jobs}) == 12
    assert {j.text for j in jobs} == {"a cat on the beach", "a red cat"}


def test_run_schema_metrics_and_resume(setup, tmp_path):
    out = tmp_path / "run"
    summary = run_evaluation(_cfg(setup, out), SCORERS, progress=False)

    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 12
    assert {"key", "label", "method", "file", "step", "concept", "prompt", "text", "seed", "image",
            "storage_bytes", "text_fidelity", "concept_fidelity"} <= set(rows[0])
    per_image = json.loads((out / "per_image.json").read_text())
    assert all(len(r["latent_pooled"]) == 16 for r in per_image)  # 4 x 2 x 2 pooled latents
    assert all((out / r["image"]).is_file() for r in per_image)

    models = {m["step"]: m for m in summary["models"]}
    # Infusion leaves non-customised prompts to the base model: LFD exactly 0.
    assert models[4]["lfd"] == 0.0 and models[2]["lfd"] == 0.0
    # Zero Deltas (the step-2 checkpoint) reproduce the base images: W2 ~ 0; trained Deltas move them.
    assert models[2]["w2"] < 1e-8 < models[4]["w2"]
    assert models[4]["storage_bytes"] == (Path(setup[1]).stat().st_size)
    table = (out / "table.md").read_text()
    assert "| infusion | 1 | 4 |" in table and "W2^2" in table
    assert any(g.startswith("grids/") for g in summary["grids"]) and (out / "grids" / "base_mycat.png").is_file()
    assert "curve_w2.png" in summary["curves"]

    # Resume: a second run generates nothing; a lost record is redone, and only it.
    rec_file = out / "records" / "rank0.jsonl"
    lines = rec_file.read_text().splitlines()
    run_evaluation(_cfg(setup, out), SCORERS, progress=False)
    assert rec_file.read_text().splitlines() == lines
    rec_file.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # last record cut mid-write
    run_evaluation(_cfg(setup, out), SCORERS, progress=False)
    new = rec_file.read_text().splitlines()
    redone = json.loads(new[-1])
    assert redone == json.loads(lines[-1])  # deterministic: the same image, the same scores
    assert len([ln for ln in new if ln.startswith("{") and ln.endswith("}")]) == len(lines)


def test_deterministic_across_runs(setup, tmp_path):
    kw = dict(checkpoints=False, lfd_samples=0, max_prompts=1)
    run_evaluation(_cfg(setup, tmp_path / "a", **kw), SCORERS, progress=False)
    run_evaluation(_cfg(setup, tmp_path / "b", **kw), SCORERS, progress=False)
    a = json.loads((tmp_path / "a" / "per_image.json").read_text())
    b = json.loads((tmp_path / "b" / "per_image.json").read_text())
    assert a == b


def test_config_errors(setup, tmp_path):
    with pytest.raises(ValueError, match="images-per-prompt"):
        _cfg(setup, tmp_path, images_per_prompt=0)
    with pytest.raises(ValueError, match="at least one customisation file"):
        _cfg(setup, tmp_path, files=[])


def test_accelerate_two_processes_give_the_one_process_result(setup, tmp_path):
    """README: ``accelerate launch -m infusion.cli evaluate`` splits the images across processes (gloo on CPU);
    the per-image records and the summary equal a one-process run's."""
    import os
    import subprocess
    import sys

    root, file, prompts, lfd = setup
    args = ["evaluate", str(file), "--model", "tiny", "--prompts", str(prompts), "--images-per-prompt", "2", "--steps", "2",
            "--guidance", "2.0", "--batch-size", "1", "--lfd-data", str(lfd), "--lfd-samples", "2", "--no-probes"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, "-m", "infusion.cli", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "infusion.cli", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "two" / "records").glob("rank*.jsonl"))
    assert shards == ["rank0.jsonl", "rank1.jsonl"]  # both processes generated
    a = {r["key"]: r for r in json.loads((tmp_path / "one" / "per_image.json").read_text())}
    b = {r["key"]: r for r in json.loads((tmp_path / "two" / "per_image.json").read_text())}
    assert a.keys() == b.keys() and len(a) == 8  # (base + the concept) x 2 prompts x 2 seeds
    for k in a:
        for field in ("prompt", "seed", "image", "latent_pooled"):
            assert a[k][field] == b[k][field] or np.allclose(a[k][field], b[k][field], atol=1e-5), (k, field)
