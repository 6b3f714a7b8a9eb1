"""Can Infusion's residual carry a concept's look on the world at all? An expressivity test.

The paper's Infusion, trained on the concept's five images, does not learn the look on the world (docs/results.md).
Two explanations are possible: the *objective* (C learns to denoise the concept's images with F running on those
same images, a task it never meets at sampling time, where F draws its own object) or the *mechanism* (a residual
on the concept token's value, applied through F's maps, cannot express a look that differs across the object).
This script separates them. A DreamBooth model without the prior (the table's best look) is the teacher; Infusion's
residual is trained to reproduce the teacher's guided noise prediction **on the sampler's own states**: F runs on
the base model's trajectory (as at sampling time) and C on the teacher's, for the validation prompts and the
training caption; ``--rounds 2`` adds the student's own trajectories relabelled by the teacher (DAgger). If the
look then comes through on the *test* prompts, the mechanism can express it and the gap is in the training; if
not, the mechanism is the limit.

The distilled file is an ordinary Infusion concept: generation and every guarantee are unchanged (placeholder-free
prompts == base model, zero residual == base model, C derived from F's maps); only how Delta was found differs.

    python studies/world_distill.py --concept sunball --out runs/distill --json docs/results/distill.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world_look_source import score_prompts  # noqa: E402

GUIDANCE = 5.0
STEPS = 25


def train_teacher(concept, work: Path, steps: int = 500) -> Path:
    """DreamBooth without the prior, as the table's ``dreambooth-noprior`` row at its defaults (lr 1e-4)."""
    from infusion.training import TrainConfig, train
    from infusion.world.concepts import write_concept_images

    dest = work / "teacher.safetensors"
    if not dest.is_file():
        images = work / "images"
        write_concept_images(concept.name, images)
        train(TrainConfig(model="world", images=str(images), name=concept.name, class_phrase=concept.class_phrase,
                          out=str(dest), method="dreambooth", steps=steps, method_args={"prior_loss_weight": 0}),
              progress=False)
    return dest


class Rollouts:
    """States the sampler meets: zf (K, 4, h, w) on F's (base model's) trajectory, zc (K, 4, h, w) on C's, t (K,),
    the prompt index (K,) and the teacher's guided prediction at zc (K, 4, h, w)."""

    def __init__(self):
        self.zf, self.zc, self.t, self.p, self.target = [], [], [], [], []

    def add(self, zf, zc, t, p, target):
        self.zf.append(zf), self.zc.append(zc), self.t.append(t), self.p.append(p), self.target.append(target)

    def copy(self) -> "Rollouts":
        other = Rollouts()
        other.__dict__.update({k: list(v) for k, v in self.__dict__.items()})
        return other

    def tensors(self):
        return (torch.cat(self.zf), torch.cat(self.zc), torch.cat(self.t), torch.cat(self.p), torch.cat(self.target))


@torch.no_grad()
def rollout(base, teacher, student, prompts: list[str], seeds: list[int], class_phrase: str, tok: str, out: Rollouts,
            follow: str) -> None:
    """DDIM (the world pipeline's scheduler, 25 steps, CFG 5) from each seed's noise: F follows the base model, C
    follows ``follow`` (``teacher`` or ``student``); every step records the teacher's guided prediction at C's state."""
    sched = type(base.scheduler).from_config(base.scheduler.config)
    sched.set_timesteps(STEPS)
    unet = base.unet
    size, ch = unet.config.sample_size, unet.config.in_channels

    def enc(texts):
        ids = base.tokenizer(texts, padding="max_length", max_length=base.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        return base.text_encoder(ids)[0]

    for pi, prompt in enumerate(prompts):
        f_text = enc(["", prompt.replace(tok, class_phrase)])
        for s in seeds:
            z = torch.randn(1, ch, size, size, generator=torch.Generator().manual_seed(s)) * sched.init_noise_sigma
            zf, zc = z.clone(), z.clone()
            for t in sched.timesteps:
                tt = torch.full((2,), int(t))
                fu, fc = unet(torch.cat([zf, zf]), t, encoder_hidden_states=f_text).sample.chunk(2)
                tu, tc = teacher.eps(torch.cat([zc, zc]), tt, ["", prompt]).chunk(2)
                target = tu + GUIDANCE * (tc - tu)
                out.add(zf, zc, tt[:1], torch.tensor([pi]), target)
                if follow == "student":
                    su, sc = student(zc, zf, tt[:1], [pi]).chunk(2)
                    c_eps = su + GUIDANCE * (sc - su)
                else:
                    c_eps = target
                zf = sched.step(fu + GUIDANCE * (fc - fu), t, zf).prev_sample
                zc = sched.step(c_eps, t, zc).prev_sample


class Student:
    """The Infusion method (``training.methods.infusion``) with F run on F's own states: C rows [uncond, cond]."""

    def __init__(self, concept, work: Path, prompts: list[str], residual: str, lr: float):
        from infusion.core.base_models import load_base_pipeline
        from infusion.training import TrainConfig
        from infusion.methods import get_method

        self.pipe = load_base_pipeline("world")
        self.cfg = TrainConfig(model="world", images=str(work / "images"), name=concept.name,
                               class_phrase=concept.class_phrase, out=str(work / "student.safetensors"),
                               method="infusion", lr=lr, method_args={"residual": residual})
        self.m = get_method("infusion")(self.pipe, self.cfg)
        self.m.paired = True  # forward() then runs F on self.m._f_latents
        self.cond = self.m.encode_captions(prompts)
        self.uncond = self.m.encode_captions([""])

    def __call__(self, zc, zf, t, pis):
        """zc, zf (B, 4, h, w), t (B,), prompt indices (B) -> C's [uncond (B), cond (B)] predictions."""
        from infusion.methods.base import TextBatch

        B = len(zc)
        cond = self.cond.select(torch.as_tensor(pis, dtype=torch.long))
        text = TextBatch(torch.cat([self.uncond.states.expand(B, -1, -1), cond.states]),
                         [[] for _ in range(B)] + cond.spans)
        self.m._f_latents = torch.cat([zf, zf])
        return self.m.forward(torch.cat([zc, zc]), torch.cat([t, t]), text)

    def guided_error(self, zc, zf, t, pis, target) -> torch.Tensor:
        """Per-row squared error (B,) of C's guided prediction against the teacher's, in units of the unguided one."""
        u, c = self(zc, zf, t, pis).chunk(2)
        return ((u + GUIDANCE * (c - u) - target) ** 2).mean(dim=(1, 2, 3)) / GUIDANCE**2

    @torch.no_grad()
    def mean_loss(self, data, batch: int = 64) -> float:
        """The distillation loss over every recorded state (at zero residual: how far F's attn2 outputs leave C
        from the teacher)."""
        zf, zc, t, p, target = data
        total = 0.0
        for i in range(0, len(zc), batch):
            sl = slice(i, i + batch)
            total += float(self.guided_error(zc[sl], zf[sl], t[sl], p[sl].tolist(), target[sl]).sum())
        return total / len(zc)

    def fit(self, data, steps: int, batch: int = 8, seed: int = 0) -> list[float]:
        zf, zc, t, p, target = data
        params = [q for q in self.m.trainable_state().values()]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(seed)
        losses = []
        for step in range(steps):
            idx = torch.randint(len(zc), (batch,), generator=g)
            loss = self.guided_error(zc[idx], zf[idx], t[idx], p[idx].tolist(), target[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if (step + 1) % 250 == 0:
                print(f"  step {step + 1}: loss {sum(losses[-250:]) / 250:.4f}", flush=True)
        return losses

    def export(self, path: Path) -> Path:
        from infusion.core import model_families as families
        from infusion.core.customization_files import base_fingerprint

        self.m.export(path, base_fingerprint(*families.fingerprint_modules(self.pipe)))
        return path


def paper_infusion(concept, work: Path) -> Path:
    from infusion.training import TrainConfig, train

    dest = work / "paper.safetensors"
    if not dest.is_file():
        train(TrainConfig(model="world", images=str(work / "images"), name=concept.name,
                          class_phrase=concept.class_phrase, out=str(dest), method="infusion", steps=1000),
              progress=False)
    return dest


def score_file(concept, reader, path: Path | None, prompts: list[str], seeds: int = 2) -> dict:
    """``score_prompts`` with every prompt repeated ``seeds`` times (None: the base model)."""
    return score_prompts(concept, reader, path, [p for p in prompts for _ in range(seeds)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="sunball")
    ap.add_argument("--out", default="runs/distill")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seeds", type=int, default=4, help="trajectories per distillation prompt")
    ap.add_argument("--steps", type=int, default=1500, help="distillation steps per round")
    ap.add_argument("--rounds", type=int, default=2, help="1: teacher's trajectories; 2: + the student's (DAgger)")
    ap.add_argument("--residuals", default="value,query")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--teacher-steps", type=int, default=500)
    ap.add_argument("--smoke", action="store_true", help="2 prompts of each set (a check that the script runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from infusion.customized import load_customized
    from infusion.evaluation.world_results import WorldReader
    from infusion.core.base_models import load_base_pipeline
    from infusion.world.concepts import eval_prompts, get_concept, validation_prompts

    concept = get_concept(args.concept)
    work = Path(args.out) / concept.name
    work.mkdir(parents=True, exist_ok=True)
    tok = f"<{concept.name}>"
    train_prompts = [f"a photo of a {tok}"] + validation_prompts(concept.name)
    test = eval_prompts(concept.name)
    if args.smoke:
        train_prompts, test = train_prompts[:2], test[:2]
    reader = WorldReader()
    res = {"concept": concept.name, "distillation_prompts": train_prompts, "seeds": args.seeds, "steps": args.steps,
           "rounds": args.rounds, "lr": args.lr, "scores (test prompts x 2 seeds)": {}}
    scores = res["scores (test prompts x 2 seeds)"]
    t0 = time.time()
    teacher_path = train_teacher(concept, work, args.teacher_steps)
    print(f"teacher ready ({time.time() - t0:.0f} s)", flush=True)
    base = load_base_pipeline("world")
    teacher = load_customized("world", [teacher_path])
    data = Rollouts()
    rollout(base, teacher, None, train_prompts, list(range(args.seeds)), concept.class_phrase, tok, data, "teacher")
    print(f"teacher rollouts: {len(data.zc)} states ({time.time() - t0:.0f} s)", flush=True)
    for residual in args.residuals.split(","):
        student = Student(concept, work, train_prompts, residual, args.lr)
        d = data.copy()
        if "zero-residual loss" not in res:
            res["zero-residual loss"] = student.mean_loss(data.tensors())
            print("distillation loss at zero residual:", res["zero-residual loss"], flush=True)
        for r in range(args.rounds):
            if r > 0:
                rollout(base, teacher, student, train_prompts, list(range(args.seeds)), concept.class_phrase, tok, d,
                        "student")
            losses = student.fit(d.tensors(), args.steps, seed=r)
            path = student.export(work / f"distilled-{residual}-round{r + 1}.safetensors")
            key = f"distilled {residual}, round {r + 1}"
            scores[key] = score_file(concept, reader, path, test)
            scores[key]["final_loss"] = sum(losses[-100:]) / 100
            print(key, scores[key], f"({time.time() - t0:.0f} s)", flush=True)
    scores["base model"] = score_file(concept, reader, None, test)
    scores["teacher (dreambooth-noprior)"] = score_file(concept, reader, teacher_path, test)
    scores["paper's infusion (1,000 steps)"] = score_file(concept, reader, paper_infusion(concept, work), test)
    for k in ("base model", "teacher (dreambooth-noprior)", "paper's infusion (1,000 steps)"):
        print(k, scores[k], flush=True)
    res["seconds"] = time.time() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
