"""Every customization method side by side: trainable parameters, file size, training-step time.

Per method, on one model:
  params     trainable parameter count (``Method.trainable_parameters``)
  file       bytes of what ``infusion train --out`` writes (the method's own ``export``), measured on
             disk; DreamBooth's folder is computed instead (UNet parameters x 4 bytes, fp32
             safetensors, i.e. the part it fine-tunes; the folder also holds the VAE and text encoder)
  step       median seconds of one training step (forward, backward, AdamW), batch 1, prior
             preservation off (with it, DreamBooth and Custom Diffusion run twice the rows), and the
             ratio to Infusion's step timed alternately with it (same load on a shared CPU)

Models: ``sd15`` is the exact SD1.5 UNet config with random weights at ``--latent`` (32 = 256 px),
a 1-layer CLIP text encoder of SD1.5's width 768 and a small VAE (``bench_infusion.build``): file
sizes are then exactly SD1.5's for every method but DreamBooth (whose UNet count is SD1.5's too).
``tiny`` is the test model. DreamBooth on ``sd15`` needs ~14 GB for AdamW over 860M parameters:
it is left out unless ``--dreambooth-sd15``.

    python benchmarks/bench_methods.py [--models tiny,sd15] [--latent 32] [--steps 3] [--out benchmarks/results/methods.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_infusion import build  # noqa: E402  (same SD1.5-shaped model as the Infusion benchmark)

METHODS = ["infusion", "ti", "pplus", "perfusion", "custom-diffusion", "lora", "dreambooth"]
OUT_NAME = {"custom-diffusion": "out", "dreambooth": "out"}


def make_method(name: str, pipe, tmp: Path):
    from infusion.training import TrainConfig, get_method

    cls = get_method(name)
    args = {"prior_loss_weight": 0} if "prior_loss_weight" in (cls.method_args_help or {}) else {}
    cfg = TrainConfig(model="bench", images=str(tmp), name="mycat", class_phrase="cat",
                      out=str(tmp / name / OUT_NAME.get(name, "out.safetensors")), method=name, batch_size=1,
                      method_args=args)
    return cls(pipe, cfg)


def step_fn(method, pipe, latent: int):
    """One training step of ``method`` (batch 1), as the trainer runs it."""
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=method.learning_rate(), weight_decay=method.weight_decay)
    cached = method.encode_captions(["a photo of a <mycat>"]) if method.cache_text else None
    g = torch.Generator().manual_seed(0)

    def step():
        z = torch.randn(1, 4, latent, latent, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        text = cached if cached is not None else method.encode_captions(["a photo of a <mycat>"])
        loss = torch.nn.functional.mse_loss(method(z, t, text), torch.randn(z.shape, generator=g))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def file_bytes(name: str, method, pipe) -> tuple[int, str]:
    from infusion.core.customization_files import storage_bytes

    if name == "dreambooth":
        return sum(p.numel() for p in pipe.unet.parameters()) * 4, "computed (UNet x fp32)"
    path = Path(method.cfg.out)
    method.export(path, "bench")
    return storage_bytes(path), "measured"


def run_model(kind: str, latent: int, steps: int, methods: list[str]) -> list[dict]:
    """One method at a time beside a resident Infusion model (two SD1.5-sized models in memory at
    most), their steps alternated, so that each ratio compares steps taken under the same load of
    a shared CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref_pipe = build(kind, latent)
        ref = make_method("infusion", ref_pipe, tmp)
        ref_step = step_fn(ref, ref_pipe, ref_pipe.unet.config.sample_size)
        ref_step()  # warm-up
        size, how = file_bytes("infusion", ref, ref_pipe)
        rows = [{"model": kind, "method": "infusion", "params": sum(p.numel() for p in ref.trainable_parameters()),
                 "file_bytes": size, "file": how, "times": []}]
        for name in [m for m in methods if m != "infusion"]:
            pipe = build(kind, latent)
            m = make_method(name, pipe, tmp)
            step = step_fn(m, pipe, pipe.unet.config.sample_size)
            step()  # warm-up (and the Perfusion EMA's first step, so that it can export)
            mine, theirs = [], []
            for _ in range(steps):
                for fn, acc in ((ref_step, theirs), (step, mine)):
                    t0 = time.perf_counter()
                    fn()
                    acc.append(time.perf_counter() - t0)
            size, how = file_bytes(name, m, pipe)
            rows.append({"model": kind, "method": name, "params": sum(p.numel() for p in m.trainable_parameters()),
                         "file_bytes": size, "file": how, "step_s": statistics.median(mine),
                         "infusion_step_s": statistics.median(theirs),
                         "step_vs_infusion": statistics.median(mine) / statistics.median(theirs)})
            rows[0]["times"] += theirs
            del pipe, m, step
    rows[0]["step_s"] = statistics.median(rows[0].pop("times"))
    rows[0]["step_vs_infusion"] = 1.0
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,sd15")
    ap.add_argument("--latent", type=int, default=32, help="latent side for sd15 (32 = 256 px)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--dreambooth-sd15", action="store_true", help="also time DreamBooth on sd15 (~14 GB RAM)")
    ap.add_argument("--out", default="benchmarks/results/methods.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for kind in args.models.split(","):
        methods = [m for m in args.methods.split(",") if kind != "sd15" or m != "dreambooth" or args.dreambooth_sd15]
        rows += run_model(kind, args.latent, args.steps, methods)
    print(f"{'model':6} {'method':17} {'params':>12} {'file bytes':>14}  {'step s':>8} {'x infusion':>10}")
    for r in rows:
        ratio = f"{r['step_vs_infusion']:.2f}" if r["step_vs_infusion"] else "-"
        print(f"{r['model']:6} {r['method']:17} {r['params']:>12,} {r['file_bytes']:>14,}  {r['step_s']:>8.3f} {ratio:>10}"
              + ("  (computed)" if r["file"] != "measured" else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
           "processor": platform.processor(), "latent": args.latent, "steps": args.steps}
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
