"""``infusion train`` and our pipelines against diffusers' own scripts and pipeline, side by side (DESIGN section 8).

Training, per method (ti, lora, custom-diffusion, dreambooth): our trainer's iteration (``Trainer.step``:
``draw`` + ``update`` + the loop's one ``loss.item()``) against the diffusers example script's (reproduced line by line
in ``diffusers_reference.py``, which cites each script's lines and lists every deviation), same model, resolution,
batch, AdamW, fp32, prior preservation off on both sides:

  iter   the whole iteration as each runs it: ours draws latents from the VAE posteriors it cached at setup and takes
         cached text states where the text side is frozen; the scripts read and transform image files (DataLoader),
         VAE-encode them and (lora, dreambooth) run the frozen text encoder every step
  core   the trainable part alone: (trainable) text encoding, UNet forward, loss, backward, (their gradient clip),
         optimizer step, zero_grad, the scripts' embedding fix-ups
  peak   peak RSS (CUDA: max allocated) of a fresh process from after the model is built through setup and two
         iterations: optimizer state, gradients, activations, caches: what training adds to the loaded model

Timings are medians over ``--repeats`` iterations after one warm-up, ours and theirs alternated per repeat in one
process (ti, lora, custom-diffusion). DreamBooth's AdamW over the 860 M UNet parameters takes ~14 GB per side: its
two sides run one after the other, each in its own process (not interleaved; a note in the JSON says so).

Generation (``--steps`` DDIM steps, guidance 7.5, latents out, ``--gen-repeats`` alternated): base
``StableDiffusionPipeline`` vs our ``InfusionPipeline`` with no concept; a LoRA file (written by our trainer)
loaded with ``pipe.load_lora_weights`` vs ``load_customized``; a TI file with ``pipe.load_textual_inversion`` vs
``load_customized``.

Options (ours only, Custom Diffusion, each in its own process): fp32, ``--mixed-precision bf16``,
``--gradient-checkpointing`` and, where bitsandbytes is importable, ``--optimizer adamw8bit``: iteration time and
peak memory, ratios to fp32.

Model (``--model sd15-full``, the default): every part at Stable Diffusion 1.5's config with random weights
(``bench_infusion.build_sd15_full``: the UNet, the VAE, the 12-layer CLIP ViT-L/14 text encoder), since the scripts
run the VAE encoder and the text encoder every step; ``--model sd15``: SD 1.5's UNet with a small VAE and a
1-layer text encoder (what the figures before 2026-12-07 used). ``--latent`` 16 (128 px), batch 1, 2 threads, 5
training repeats (DreamBooth 3), 3 generation repeats of 4 steps: the full run takes ~12 minutes on a quiet
2-core CPU. ``--quick``: the tiny test model, 2 repeats (a smoke test). ``--merge`` measures some methods or parts
and keeps the rest of ``--out``. Ratios are
ours / theirs (< 1: ours faster or lighter).

    python benchmarks/bench_peers.py [--latent 16] [--repeats 5] [--gen-repeats 8] [--steps 4]
                                     [--parts training,memory,generation,options] [--out benchmarks/results/peers_cpu.json]
    python benchmarks/bench_peers.py --quick --out /tmp/peers_quick.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
# the same SD1.5-shaped model as the other benchmarks
from bench_infusion import _vm_kb, build
from diffusers_reference import DEVIATIONS, SCRIPTS, Reference

METHODS = ["ti", "lora", "custom-diffusion", "dreambooth"]
SEPARATE = {"dreambooth"}  # too large for two sides in one process: each side in its own process


def make_images(folder: Path, resolution: int, n: int = 5) -> Path:
    """``n`` random RGB photos, 4:3, a little larger than ``resolution`` (both sides crop and resize them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h = resolution + resolution // 4
    for i in range(n):
        a = rng.integers(0, 256, (h, h * 4 // 3, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i}.png")
    return folder


class Ours:
    """Our trainer on ``pipe``: setup (``Trainer``), and its iteration split as the trainer runs it."""

    def __init__(self, method: str, pipe, images: Path, batch: int, resolution: int, out: Path, **options):
        from infusion.training import TrainConfig, Trainer, get_method

        cls = get_method(method)
        keep_grads = options.pop("keep_grads", None)  # True/False: set_to_none=not keep_grads; None: the trainer's rule
        args = {"prior_loss_weight": 0} if "prior_loss_weight" in (cls.method_args_help or {}) else {}
        cfg = TrainConfig(model="bench", images=str(images), name="mycat", class_phrase="cat", out=str(out),
                          method=method, batch_size=batch, resolution=resolution, steps=10**6, method_args=args,
                          save_state=False, **options)
        self.trainer = Trainer(cfg, pipe=pipe, progress=False)
        if keep_grads is not None:
            self.trainer.set_grads_to_none = not keep_grads
        self.i = 0

    def iteration(self) -> tuple[float, float]:
        """-> (whole iteration seconds, core seconds)."""
        t0 = time.perf_counter()
        batch = self.trainer.draw(self.i)
        t1 = time.perf_counter()
        self.trainer.update(batch).item()  # the loop's one read-back (Trainer.run)
        t2 = time.perf_counter()
        self.i += 1
        return t2 - t0, t2 - t1

    def export(self, path: Path, fingerprint: str = "bench"):
        return self.trainer.method.export(path, fingerprint)


class Theirs:
    def __init__(self, method: str, pipe, images: Path, batch: int, resolution: int):
        self.ref = Reference(method, pipe, images, batch, resolution)

    def iteration(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        prep = self.ref.prepare(self.ref.next_batch())
        t1 = time.perf_counter()
        self.ref.core(prep).detach().item()  # logs = {"loss": loss.detach().item(), ...} (e.g. lora :1369)
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1


def side(name: str, method: str, kind: str, latent: int, images: Path, batch: int, tmp: Path):
    pipe = build(kind, latent)
    res = latent * pipe.vae_scale_factor
    if name == "ours":
        return Ours(method, pipe, images, batch, res, tmp / f"{method}.out")
    return Theirs(method, pipe, images, batch, res)


def _summary(times: dict) -> dict:
    med = {k: {part: statistics.median(v[part]) for part in ("iter", "core")} for k, v in times.items()}
    out = {"seconds": med, "iter_ratio": med["ours"]["iter"] / med["theirs"]["iter"],
           "core_ratio": med["ours"]["core"] / med["theirs"]["core"], "samples": times}
    if len(times["ours"]["iter"]) == len(times["theirs"]["iter"]):  # interleaved: each repeat's own ratio, whose
        for part in ("iter", "core"):  # median is robust to the machine's drift over the run
            out[f"paired_{part}_ratio"] = statistics.median(
                a / b for a, b in zip(times["ours"][part], times["theirs"][part]))
    return out


def bench_train_interleaved(method, kind, latent, images, batch, repeats, tmp) -> dict:
    sides = {n: side(n, method, kind, latent, images, batch, tmp) for n in ("ours", "theirs")}
    for s in sides.values():
        s.iteration()  # warm-up
    times = {n: {"iter": [], "core": []} for n in sides}
    for _ in range(repeats):  # alternated: drift of a shared CPU hits both alike
        for n, s in sides.items():
            it, core = s.iteration()
            times[n]["iter"].append(it)
            times[n]["core"].append(core)
    return _summary(times)


def _child(args_list: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args_list], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"child {args_list} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _import_both_sides(method: str) -> None:
    import accelerate  # noqa: F401
    import diffusers.loaders
    import diffusers.optimization  # noqa: F401
    import peft  # noqa: F401
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0  # noqa: F401

    from infusion.training import get_method

    get_method(method)  # its training module


def child_run(name, method, kind, latent, images, batch, repeats, options: dict | None = None) -> None:
    """In a fresh process: build, reset the peak mark, set up ``name``'s side, warm-up + ``repeats`` iterations ->
    JSON {peak_mb, iter, core} on stdout."""
    pipe = build(kind, latent)
    res = latent * pipe.vae_scale_factor
    _import_both_sides(method)  # code is not training memory: import it before the mark
    gc.collect()
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
            base = _vm_kb("VmRSS") * 1024
        s = (Ours(method, pipe, Path(images), batch, res, Path(tmp) / f"{method}.out", **(options or {}))
             if name == "ours" else Theirs(method, pipe, Path(images), batch, res))
        times = {"iter": [], "core": []}
        for i in range(repeats + 1):
            it, core = s.iteration()
            if i:  # the first is the warm-up
                times["iter"].append(it)
                times["core"].append(core)
        peak = (torch.cuda.max_memory_allocated() if cuda else _vm_kb("VmHWM") * 1024) - base
    print(json.dumps({"peak_mb": peak / 2**20, **times}))


def bench_memory(method, kind, latent, images, batch, threads) -> dict:
    peak = {n: _child(["--child", n, method, kind, str(latent), str(images), str(batch), "1", "--threads", str(threads)])
            ["peak_mb"] for n in ("ours", "theirs")}
    return {"peak_mb": peak, "memory_ratio": peak["ours"] / peak["theirs"]}


def bench_train_separate(method, kind, latent, images, batch, repeats, threads, also_free_grads=False) -> dict:
    runs = {n: _child(["--child", n, method, kind, str(latent), str(images), str(batch), str(repeats),
                       "--threads", str(threads)]) for n in ("ours", "theirs")}
    r = _summary({n: {"iter": v["iter"], "core": v["core"]} for n, v in runs.items()})
    r.pop("paired_iter_ratio", None), r.pop("paired_core_ratio", None)  # not interleaved: no repeat pairs
    r["note"] = "each side in its own process, one after the other (not interleaved): two fit in no 23 GB machine"
    r["memory"] = {"peak_mb": {n: v["peak_mb"] for n, v in runs.items()},
                   "memory_ratio": runs["ours"]["peak_mb"] / runs["theirs"]["peak_mb"]}
    if also_free_grads:  # ours again with zero_grad(set_to_none=True): the gradient buffers freed every step (the trainer
        # keeps them on a CPU)
        k = _child(["--child", "ours", method, kind, str(latent), str(images), str(batch), str(repeats),
                    "--threads", str(threads), "--child-options", json.dumps({"keep_grads": False})])
        med = statistics.median(k["iter"])
        r["grads_to_none"] = {"seconds": {"iter": med, "core": statistics.median(k["core"])}, "samples": k,
                           "iter_ratio": med / r["seconds"]["theirs"]["iter"], "peak_mb": k["peak_mb"],
                           "memory_ratio": k["peak_mb"] / runs["theirs"]["peak_mb"]}
    return r


OPTIONS = {"fp32": {}, "bf16": {"mixed_precision": "bf16"}, "gradient_checkpointing": {"gradient_checkpointing": True},
           "adamw8bit": {"optimizer": "adamw8bit"}}  # adamw8bit: only where bitsandbytes is importable


def bench_options(method, kind, latent, images, batch, repeats, threads) -> dict:
    """Our trainer's precision and memory options on CPU, each in its own process: iteration time and peak memory,
    and their ratios to fp32 (not interleaved: one process per option)."""
    import importlib.util

    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    runs = {name: _child(["--child", "ours", method, kind, str(latent), str(images), str(batch), str(repeats),
                          "--threads", str(threads), "--child-options", json.dumps(opts)])
            for name, opts in OPTIONS.items() if have_bnb or name != "adamw8bit"}
    med = {k: statistics.median(v["iter"]) for k, v in runs.items()}
    return {"method": method, "iter_seconds": med, "peak_mb": {k: v["peak_mb"] for k, v in runs.items()},
            "iter_ratio_to_fp32": {k: med[k] / med["fp32"] for k in med},
            "memory_ratio_to_fp32": {k: runs[k]["peak_mb"] / runs["fp32"]["peak_mb"] for k in runs},
            "untested": ("every option on GPU" + ("" if have_bnb else "; adamw8bit: bitsandbytes is not installed "
                                                               "(pip install bitsandbytes)"))}


# --- generation ----------------------------------------------------------------------------------------------------
def _alternate(runs: dict, repeats: int) -> dict:
    for f in runs.values():
        f()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    a, b = list(med)
    paired = statistics.median(x / y for x, y in zip(times[a], times[b]))  # per-repeat ratios: robust to drift
    return {"seconds": med, "ratio_of_medians": med[a] / med[b], "ratio": paired, "samples": times}


def _generation_pair(ours, ours_prompt, theirs, theirs_prompt, steps, repeats) -> dict:
    kw = {"num_inference_steps": steps, "guidance_scale": 7.5, "output_type": "latent"}

    def run(pipe, prompt):
        return lambda: pipe(prompt, generator=torch.Generator().manual_seed(0), **kw)

    return _alternate({"ours": run(ours, ours_prompt), "theirs": run(theirs, theirs_prompt)}, repeats)


def bench_generation(kind, latent, steps, repeats, files: dict) -> dict:
    from infusion.customized import load_customized
    from infusion.methods.infusion.pipeline import InfusionPipeline

    base = build(kind, latent)
    prompt = "a photo of a cat on the beach"
    ours = InfusionPipeline.from_pipe(base)
    ours.set_progress_bar_config(disable=True)  # from_pipe does not carry build()'s setting over
    out = {"no_concept": _generation_pair(ours, prompt, base, prompt, steps, repeats)}
    del base
    gc.collect()
    for method, path in files.items():  # a file our trainer wrote, loaded by diffusers' loader and by ours
        theirs = build(kind, latent)
        if method == "lora":
            theirs.load_lora_weights(str(path))
            theirs_prompt = "a photo of sks cat on the beach"
        else:
            theirs.load_textual_inversion(str(path), token="<mycat>")
            theirs_prompt = "a photo of <mycat> on the beach"
        ours = load_customized(build(kind, latent), [path])
        ours.pipe.set_progress_bar_config(disable=True)
        out[method] = _generation_pair(ours, "a photo of <mycat> on the beach", theirs, theirs_prompt, steps, repeats)
        del theirs, ours
        gc.collect()
    return out


TARGETS = {"iter": 1.0, "core": 1.0, "memory": 1.05, "generation": 1.02}  # issue 33's "done when"


def summary(results: dict) -> list[dict]:
    """Every ratio with its target: training steps <= 1.0, peak memory <= 1.05, generation <= 1.02."""
    rows = []
    for method, r in results.get("training", {}).items():
        for part in ("iter", "core"):  # interleaved: the median of per-repeat ratios (robust to drift), else of times
            key = f"paired_{part}_ratio" if f"paired_{part}_ratio" in r else f"{part}_ratio"
            if key in r:
                rows.append({"what": f"{method} {part}" + (" (paired)" if key.startswith("paired") else ""),
                             "ratio": r[key], "target": TARGETS[part]})
        if "memory" in r:
            rows.append({"what": f"{method} peak memory", "ratio": r["memory"]["memory_ratio"], "target": TARGETS["memory"]})
    for k, v in results.get("generation", {}).items():
        rows.append({"what": f"generation {k}", "ratio": v["ratio"], "target": TARGETS["generation"]})
    for row in rows:
        row["ok"] = row["ratio"] <= row["target"]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny model, 2 repeats, 2 generation steps")
    ap.add_argument("--model", default="sd15-full", choices=["sd15-full", "sd15"],
                    help="sd15-full: every part at SD 1.5's config (the VAE encoder and the 12-layer text encoder the "
                         "scripts run per step); sd15: SD 1.5's UNet with a small VAE and a 1-layer text encoder")
    ap.add_argument("--latent", type=int, default=16, help="latent side (16 = 128 px)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None, help="timed iterations per side (default 5; quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per generation (default 4; quick 2)")
    ap.add_argument("--gen-repeats", type=int, default=None, help="timed generations per side (default 8; quick 2)")
    ap.add_argument("--db-repeats", type=int, default=3, help="timed DreamBooth iterations per side (its AdamW over "
                    "the whole UNet makes each the dearest)")
    ap.add_argument("--also-free-grads", action="store_true", help="DreamBooth: also time ours with zero_grad(set_to_none="
                    "True), the gradient buffers freed every step (the trainer keeps them on a CPU)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the machine's cores)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--parts", default="training,memory,generation,options")
    ap.add_argument("--out", default=None, help="default benchmarks/results/peers_cpu.json (quick: peers_quick.json)")
    ap.add_argument("--merge", action="store_true", help="keep what an existing --out holds for the methods and parts "
                    "this run does not measure (each entry records its own settings and date)")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--child-options", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        name, method, kind, latent, images, batch, repeats = args.child
        return child_run(name, method, kind, int(latent), images, int(batch), int(repeats),
                         json.loads(args.child_options)) or 0
    kind = "tiny" if args.quick else args.model
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.steps = args.steps or (2 if args.quick else 4)
    args.gen_repeats = args.gen_repeats or (2 if args.quick else 8)
    args.out = args.out or f"benchmarks/results/peers_{'quick' if args.quick else 'cpu'}.json"
    import accelerate
    import diffusers
    import peft
    import transformers

    results = {"device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
               "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": __import__("os").cpu_count(),
               "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                            "peft": peft.__version__},
               "model": kind, "args": vars(args), "reference_scripts": SCRIPTS, "deviations": DEVIATIONS,
               "training": {}}
    parts = args.parts.split(",")
    out = Path(args.out)
    if args.merge and out.is_file():  # earlier entries keep their figures; the header says this run's settings
        old = json.loads(out.read_text())
        results["training"] = old.get("training", {})
        results.update({k: old[k] for k in ("generation", "options") if k in old})
    settings = {"model": kind, "latent": args.latent, "batch": args.batch, "repeats": args.repeats,
                "db_repeats": args.db_repeats,
                "steps": args.steps, "gen_repeats": args.gen_repeats, "measured": time.strftime("%Y-%m-%d %H:%M")}
    t_start = time.perf_counter()

    def save(results):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**results, "summary": summary(results)}, indent=1))

    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        latent = args.latent if kind != "tiny" else build("tiny", 0).unet.config.sample_size
        res = latent * 8
        images = make_images(tmp / "images", res)
        for method in args.methods.split(","):
            r = {}
            if "training" in parts:
                if method in SEPARATE:
                    r = bench_train_separate(method, kind, latent, images, args.batch, min(args.repeats, args.db_repeats),
                                             args.threads, args.also_free_grads)
                else:
                    r = bench_train_interleaved(method, kind, latent, images, args.batch, args.repeats, tmp)
                gc.collect()
                print(f"[{method}] iteration ours/theirs = {r['iter_ratio']:.3f}, core = {r['core_ratio']:.3f}  "
                      f"(s: {r['seconds']})", flush=True)
            if method in ("ti", "lora") and "generation" in parts:  # the files generation loads: one step of ours
                pipe = build(kind, latent)
                o = Ours(method, pipe, images, args.batch, res, tmp / f"{method}.safetensors")
                o.iteration()
                files[method] = o.export(tmp / f"{method}.safetensors") and tmp / f"{method}.safetensors"
                del o, pipe
                gc.collect()
            if "memory" in parts and method not in SEPARATE:
                r["memory"] = bench_memory(method, kind, latent, images, args.batch, args.threads)
            if "memory" in r:
                print(f"[{method}] peak memory ours/theirs = {r['memory']['memory_ratio']:.3f}  "
                      f"(MB: {r['memory']['peak_mb']})", flush=True)
            if r:
                results["training"][method] = {**r, "settings": settings}
                save(results)  # each finished method is kept if a later one fails (e.g. killed for memory)
        if "options" in parts:
            results["options"] = o = {**bench_options("custom-diffusion", kind, latent, images, args.batch, 2,
                                                      args.threads), "settings": settings}
            print(f"[options, custom-diffusion] iteration / fp32: {o['iter_ratio_to_fp32']}; peak memory / fp32: "
                  f"{o['memory_ratio_to_fp32']}", flush=True)
        if "generation" in parts:
            results["generation"] = gen = bench_generation(kind, latent, args.steps, args.gen_repeats, files)
            for k, v in gen.items():
                v["settings"] = settings
                print(f"[generation {k}] ours/theirs = {v['ratio']:.3f}  (s: {v['seconds']})", flush=True)
    results["wall_seconds"] = time.perf_counter() - t_start
    results["summary"] = summary(results)
    print("ours / theirs (target):")
    for row in results["summary"]:
        print(f"  {row['what']:38} {row['ratio']:.3f}  (<= {row['target']})  {'ok' if row['ok'] else 'ABOVE'}")
    save(results)
    print(f"wrote {out} ({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
