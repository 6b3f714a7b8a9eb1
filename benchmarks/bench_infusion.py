"""Infusion speed and memory, measured side by side in one run (DESIGN section 8).

Ratios (targets from the foundation issue):
  generation   Infusion / base pipeline, same steps and batch     floor 2.0, target <= 2.05
  maps=own     Infusion maps=own / the paper's Infusion            (reported; C's own map costs a Q projection)
  concepts     3 concepts / 1 concept                              floor 1.0, target <= 1.02
  train step   Infusion / Textual-Inversion-style step             floor 1 + fwd/TI (~1.33), target <= 1.4
               (floor: an F forward without grad on top of a C forward and backward no dearer than TI's; ``fwd``,
               a plain no-grad UNet forward, is timed interleaved with the two steps and reported)
  peak memory  Infusion / TI-style training step                   target <= 1.1

Models: the exact SD1.5 UNet config with random weights at a CPU size (``--latent 32`` = 256 px),
with a small VAE and a 1-layer CLIP text encoder of SD1.5's width 768 (neither is on the
per-step path), and the tiny test model. ``--family sdxl``: the exact SDXL 1.0 UNet config (70
attn2 layers, 2.6 B parameters, fp32) with random weights at ``--latent 16`` (128 px), two 1-layer
text encoders of SDXL's widths (768 and 1280, pooled projection 1280); its training steps are the
trainer's own Infusion and Textual Inversion methods (one vector per encoder), time ids included. Timings are medians of repeated runs, taken
interleaved; ratios are medians of per-repeat ratios. Peak memory is measured in a fresh subprocess per method (CPU: peak RSS growth
over the loaded model; CUDA: ``max_memory_allocated``).

    python benchmarks/bench_infusion.py [--latent 32] [--steps 4] [--repeats 3] [--out benchmarks/results/infusion.json]
    python benchmarks/bench_infusion.py --family sdxl   # -> benchmarks/results/infusion_sdxl.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def build(kind: str, latent: int):
    """A StableDiffusionPipeline: ``sd15`` (SD1.5 UNet config) or ``tiny``."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from infusion.core.model_configs import sd15_unet_config, tiny_sd_pipeline

    if kind == "tiny":
        return tiny_sd_pipeline()
    if kind == "sdxl":
        return build_sdxl(latent)
    if kind == "sd15-full":
        return build_sd15_full(latent)
    unet, vae = _unet_and_small_vae(sd15_unet_config(), latent)
    base = tiny_sd_pipeline()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(base.tokenizer), hidden_size=768, intermediate_size=3072,
                                      num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=77))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=base.tokenizer, unet=unet,
                                   scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sd15_full(latent: int):
    """Every part at Stable Diffusion 1.5's config with random weights: the UNet, the VAE (4 blocks of 128-512
    channels, 2 layers each) and the CLIP ViT-L/14 text encoder (12 layers of width 768), for comparisons whose
    per-step path includes the VAE encoder and the text encoder (diffusers' training scripts run both every step)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from infusion.core.model_configs import assemble_pipeline, clip_text_encoder, load_tokenizer, sd15_unet_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**sd15_unet_config(), "sample_size": latent})
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=8 * latent, scaling_factor=0.18215)
    tok = load_tokenizer()
    te = clip_text_encoder(768, layers=12, heads=12, tokenizer=tok)
    return assemble_pipeline(vae, te, unet, tok)


def _unet_and_small_vae(config: dict, latent: int):
    """The UNet of ``config`` (seeded random weights) at ``latent`` size, and a small 8x VAE (off the per-step path)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**config, "sample_size": latent})
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return unet, vae


def build_sdxl(latent: int):
    """SDXL 1.0's UNet (exact config, random weights) with small stand-ins for the parts off the per-step path."""
    from diffusers import StableDiffusionXLPipeline

    from infusion.core.model_configs import clip_text_encoder, ddim_scheduler, load_tokenizer, sdxl_unet_config

    unet, vae = _unet_and_small_vae(sdxl_unet_config(), latent)
    tok, tok2 = load_tokenizer(), load_tokenizer(pad_token="!")
    te = clip_text_encoder(768, layers=1, heads=12, tokenizer=tok)
    te2 = clip_text_encoder(1280, layers=1, heads=20, tokenizer=tok2, projection_dim=1280, hidden_act="gelu")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=ddim_scheduler(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def concepts_for(pipe, n: int):
    from infusion.methods.infusion.concept import Concept
    from infusion.methods.infusion.processor import layer_widths

    g = torch.Generator().manual_seed(0)
    phrases = ["cat", "dog", "teapot"]
    return [Concept(f"c{i}", phrases[i], {k: 0.1 * torch.randn(1, d, generator=g) for k, d in layer_widths(pipe.unet).items()})
            for i in range(n)]


def _timeit(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_generation(kind, latent, steps, repeats):
    from infusion.methods.infusion.pipeline import InfusionPipeline

    base = build(kind, latent)
    pipe = InfusionPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    one, three = concepts_for(pipe, 1), concepts_for(pipe, 3)
    own = [dataclasses.replace(one[0], name="o0", maps="own")]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(num_inference_steps=steps, guidance_scale=8.0, output_type="latent")
    runs = {
        "base": lambda: base("a photo of a cat on the beach", generator=g(), **kw),
        "infusion_1": lambda: pipe("a photo of <c0> on the beach", concepts=one, generator=g(), **kw),
        "infusion_3": lambda: pipe("<c0> with <c1> and a <c2> on the beach", concepts=three, generator=g(), **kw),
        "infusion_own_maps": lambda: pipe("a photo of <o0> on the beach", concepts=own, generator=g(), **kw),
    }
    for f in runs.values():  # warm-up
        f()
    times = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so drift hits all alike
        for k, f in runs.items():
            times[k] += _timeit(f, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = {k: _flops(runs[k]) for k in ("base", "infusion_1", "infusion_3")}
    return {
        "seconds": med,
        "generation_ratio_infusion_over_base": _paired(times, "infusion_1", "base"),
        "concepts_ratio_3_over_1": _paired(times, "infusion_3", "infusion_1"),
        "own_maps_ratio_over_infusion": _paired(times, "infusion_own_maps", "infusion_1"),
        # the fastest run of each (what the code costs with the least interference; timeit's rule)
        "min_ratios": {"infusion_over_base": min(times["infusion_1"]) / min(times["base"]),
                       "concepts_3_over_1": min(times["infusion_3"]) / min(times["infusion_1"]),
                       "own_maps_over_infusion": min(times["infusion_own_maps"]) / min(times["infusion_1"])},
        # deterministic: floating-point operations of one generation (matmuls, convolutions, attention)
        "flops": flops,
        "flops_ratio_3_over_1": flops["infusion_3"] / flops["infusion_1"],
        "samples": times,
    }


def _flops(fn) -> int:
    """Floating-point operations of one call of ``fn`` (torch's FlopCounterMode: matmuls, convolutions, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _paired(times: dict, a: str, b: str) -> float:
    """Median over repeats of a / b timed in the same repeat: drift of a shared machine between repeats cancels
    (a ratio of two medians would take each from another repeat)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def _method_step_fn(pipe, method, latent, batch):
    """One optimisation step of the trainer's own ``method`` ('infusion' | 'ti') on ``pipe`` (SDXL: with time ids)."""
    from infusion.core.model_families import time_ids
    from infusion.training import TrainConfig
    from infusion.methods import get_method

    cfg = TrainConfig(model="sdxl-random", images=".", name="c0", class_phrase="cat", out="x", method=method)
    m = get_method(method)(pipe, cfg)
    z, t = torch.randn(batch, 4, latent, latent), torch.randint(0, 1000, (batch,))
    noise = torch.randn_like(z)
    px = latent * pipe.vae_scale_factor
    ids = time_ids((px, px), (0, 0), (px, px)).expand(batch, -1)
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    fixed = m.encode_captions(["a photo of a <c0>"] * batch).with_time_ids(ids) if m.cache_text else None

    def step():
        text = fixed if fixed is not None else m.encode_captions(["a photo of a <c0>"] * batch).with_time_ids(ids)
        loss = torch.nn.functional.mse_loss(m(z, t, text), noise)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def _train_step_fn(kind, latent, method, batch, pipe=None):
    """A closure doing one optimisation step of ``method`` ('infusion' or 'ti')."""
    from infusion.training import TrainConfig
    from infusion.methods import get_method

    pipe = pipe or build(kind, latent)
    if kind == "sdxl":
        return _method_step_fn(pipe, method, latent, batch)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    z = torch.randn(batch, 4, latent, latent)
    t = torch.randint(0, 1000, (batch,))
    noise = torch.randn_like(z)
    captions = ["a photo of a <c0>"] * batch
    if method == "infusion":
        cfg = TrainConfig(model=kind, images=".", name="c0", class_phrase="cat", out="x")
        m = get_method("infusion")(pipe, cfg)
        text = m.encode_captions(captions)
        opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)

        def step():
            loss = torch.nn.functional.mse_loss(m(z, t, text), noise)
            loss.backward()
            opt.step()
            opt.zero_grad()
    else:  # Textual-Inversion-style: one learnable token embedding, gradient through text encoder and UNet
        emb = pipe.text_encoder.get_input_embeddings()
        ids = pipe.tokenizer([c.replace("<c0>", "cat") for c in captions], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        pos = ids == 2368  # "cat"
        vec = emb.weight[2368].clone().requires_grad_(True)
        opt = torch.optim.AdamW([vec], lr=5e-4)

        def put_vec(module, inputs, out):  # the learned row replaces the token's embedding
            out = out.clone()
            out[pos] = vec.to(out.dtype)
            return out

        emb.register_forward_hook(put_vec)

        def step():
            states = pipe.text_encoder(ids)[0]
            loss = torch.nn.functional.mse_loss(pipe.unet(z, t, encoder_hidden_states=states).sample, noise)
            loss.backward()
            opt.step()
            opt.zero_grad()
    return step


def _forward_fn(kind, latent, batch, pipe=None):
    """A plain no-grad UNet forward (stock processors) at the training step's shapes: the F pass's cost."""
    if kind == "sdxl":
        return None
    pipe = build(kind, latent)
    z, t = torch.randn(batch, 4, latent, latent), torch.randint(0, 1000, (batch,))
    states = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim)

    def fwd():
        with torch.no_grad():
            pipe.unet(z, t, encoder_hidden_states=states)

    return fwd


def bench_training(kind, latent, batch, repeats):
    shared = build(kind, latent) if kind == "sdxl" else None  # one 10 GB SDXL UNet for both methods, not two
    steps = {m: _train_step_fn(kind, latent, m, batch, shared) for m in ("infusion", "ti")}
    fwd = _forward_fn(kind, latent, batch)
    if fwd is not None:
        steps["forward_no_grad"] = fwd
    for f in steps.values():
        f()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, f in steps.items():
            times[k] += _timeit(f, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    r = {"seconds": med, "train_step_ratio_infusion_over_ti": _paired(times, "infusion", "ti"), "samples": times}
    if "forward_no_grad" in med:
        r["floor_ratio"] = 1 + statistics.median(f / t for f, t in zip(times["forward_no_grad"], times["ti"], strict=True))
        r["infusion_over_floor"] = r["train_step_ratio_infusion_over_ti"] / r["floor_ratio"]
    return r


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(kind, latent, method, batch):
    """Run in a subprocess: peak memory of one step above the memory before it (after a warm-up
    step). CPU: the kernel's peak-RSS mark is reset (/proc/self/clear_refs) before the step and
    read (VmHWM) after it; ru_maxrss would carry the parent's peak across fork."""
    step = _train_step_fn(kind, latent, method, batch)
    if torch.cuda.is_available():
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        print(json.dumps({"peak_growth_kb": (torch.cuda.max_memory_allocated() - base) / 1024}))
        return
    step()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    rss0 = _vm_kb("VmRSS")
    step()
    print(json.dumps({"peak_growth_kb": _vm_kb("VmHWM") - rss0}))


def bench_memory(kind, latent, batch):
    res = {}
    for method in ("infusion", "ti"):
        out = subprocess.run([sys.executable, __file__, "--child-memory", kind, str(latent), method, str(batch)],
                             capture_output=True, text=True, check=True)
        res[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_kb"] / 1024
    return {"peak_step_mb": res, "memory_ratio_infusion_over_ti": res["infusion"] / res["ti"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="sd", choices=["sd", "sdxl"],
                    help="sd: tiny + SD1.5 UNet config; sdxl: SDXL 1.0 UNet config (defaults --latent 16 --steps 2 "
                         "--repeats 4, out infusion_sdxl.json)")
    ap.add_argument("--latent", type=int, default=None, help="UNet latent size (default 32 = 256 px; SDXL 16)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per generation (default 4; SDXL 2)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; SDXL 4)")
    ap.add_argument("--batch", type=int, default=1, help="training batch")
    ap.add_argument("--models", default=None, help="default tiny,sd15 (--family sdxl: sdxl)")
    ap.add_argument("--parts", default="generation,training,memory", help="which measurements to run")
    ap.add_argument("--out", default=None, help="default benchmarks/results/infusion.json (SDXL: infusion_sdxl.json)")
    ap.add_argument("--merge", action="store_true", help="keep the parts and models of an existing --out that this run "
                    "does not measure (each part records its own settings and date)")
    ap.add_argument("--child-memory", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    xl = args.family == "sdxl"
    args.latent = args.latent or (16 if xl else 32)
    args.steps = args.steps or (2 if xl else 4)
    args.repeats = args.repeats or (4 if xl else 3)  # SDXL's 3/1 ratio is within 3% of 1: 2 repeats could not tell
    args.models = args.models or ("sdxl" if xl else "tiny,sd15")
    args.out = args.out or f"benchmarks/results/infusion{'_sdxl' if xl else ''}.json"
    if args.child_memory:
        kind, latent, method, batch = args.child_memory
        return peak_memory_child(kind, int(latent), method, int(batch))
    torch.manual_seed(0)
    out = Path(args.out)
    results = {"device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
               "machine": platform.platform(), "torch": torch.__version__, "args": vars(args), "models": {}}
    if args.merge and out.is_file():  # the parts measured before keep their figures; the header says this run's
        results["models"] = json.loads(out.read_text()).get("models", {})
    settings = {"latent": args.latent, "steps": args.steps, "repeats": args.repeats, "batch": args.batch,
                "measured": time.strftime("%Y-%m-%d %H:%M")}
    for kind in args.models.split(","):
        parts = args.parts.split(",")
        r = results["models"].get(kind, {})
        if "generation" in parts:
            r["generation"] = g = {**bench_generation(kind, args.latent, args.steps, args.repeats), "settings": settings}
            print(f"[{kind}] generation Infusion/base = {g['generation_ratio_infusion_over_base']:.3f} (floor 2.0, "
                  f"target <= 2.05); 3 concepts/1 = {g['concepts_ratio_3_over_1']:.3f} (target <= 1.02; fastest runs "
                  f"{g['min_ratios']['concepts_3_over_1']:.3f}, FLOPs {g['flops_ratio_3_over_1']:.4f}); maps=own/paper = "
                  f"{g['own_maps_ratio_over_infusion']:.3f}", flush=True)
        if "training" in parts:
            r["training"] = t = {**bench_training(kind, args.latent, args.batch, args.repeats), "settings": settings}
            floor = f"; floor 1 + fwd/TI = {t['floor_ratio']:.3f}" if "floor_ratio" in t else ""
            print(f"[{kind}] train step Infusion/TI = {t['train_step_ratio_infusion_over_ti']:.3f} (target <= 1.4{floor})",
                  flush=True)
        if "memory" in parts:
            r["memory"] = m = {**bench_memory(kind, args.latent, args.batch), "settings": settings}
            print(f"[{kind}] peak step memory Infusion/TI = {m['memory_ratio_infusion_over_ti']:.3f} (target <= 1.1); "
                  f"MB: {m['peak_step_mb']}", flush=True)
        results["models"][kind] = r
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
