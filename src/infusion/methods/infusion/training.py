"""Infusion (paper Section 4.2): train only a residual on the concept token's value in every
``attn2``; the C stream reuses F's maps, so each step is an F forward (no grad) that records
F's attention outputs and maps, then a C forward that injects the Deltas (Eq. 7, Eq. 8).

``--method-arg residual=query`` trains the query variant (``processor`` module docstring): per
layer also ``A`` (D, r) and ``B`` (r, D) so the value residual can differ across the object;
``query_rank`` r (default 4). ``A`` starts as LoRA's down projection does (Kaiming-uniform), ``B``
at zero, so at step 0 C == F exactly in both variants.

``--method-arg paired=true`` (beyond the paper; training only, generation is unchanged): at sampling
time F draws its own object and C must turn it into the concept, but in the paper's training F runs on
the concept's own noisy image, so C never sees that task. Paired training first lets the base model
redraw each training latent (SDEdit: noised to ``paired_strength`` x T, denoised with the class
caption; ``paired_views`` redraws each), which keeps the layout and gives the object the base model's
appearance; each step F then runs on the redraw (same noise and t) and C, on the concept's latent,
learns to denoise towards the concept with F's maps and outputs of the redraw.

``--method-arg maps=own`` (beyond the paper) trains the own-maps variant (``processor`` module docstring): the
Delta is placed by C's own map of the concept's tokens (their key is the class word's), the rest of attn2 is F's.
On the built-in world the look's layout (a bottom half, a diagonal) needs it: the same hand-set Delta draws
<sunball>'s look on 16 of 16 seeds placed by C's own map and on 0 of 16 placed by F's (docs/results.md).

``--method-arg preset=recommended`` names the form to use on the built-in world (``maps=own train_t_max=0.5``,
chosen from the measurements in docs/results.md and docs/variants.md); ``preset=paper`` is the default, the paper's
Infusion. A preset only fills in settings: an explicit ``--method-arg`` of the same key wins.

``--method-arg t_max=0.5`` adds the Delta at t < T/2 only, in training and in generation; ``train_t_max=0.5``
(beyond the paper) trains there only but adds the Delta at every step. On the world the training window is
what matters: own maps' Delta trained at every t reads <halfstar> on 0 of 44 test images whichever steps it is
added at, trained at t < T/2 on 13 of 44 (``studies/world_look_gap.py --rows own@late,late@full``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from infusion.core.model_families import encode_ids, text_encoders, text_parts, tokenize
from infusion.core.placeholders import parse_prompt, phrase_token_count
from infusion.methods.base import Method, TextBatch, param_key
from infusion.methods.infusion.concept import MAPS, Concept
from infusion.methods.infusion.processor import InfusionPlan, install_processors, layer_widths

RESIDUALS = ("value", "query")
# Named forms (``--method-arg preset=NAME``): the settings each one fills in
PRESETS = {
    "paper": {},  # the paper's Infusion: F's maps, every timestep (the default)
    # the best form measured on the built-in world: look rate 0.63 vs the paper's 0.10 (docs/variants.md)
    "recommended": {"maps": "own", "train_t_max": 0.5},
}
RECOMMENDED_HINT = ("Infusion: training the paper's form; the form recommended on the built-in world is "
                    "--method-arg preset=recommended (maps=own train_t_max=0.5, docs/variants.md)")


def expand_preset(args: dict) -> dict:
    """``--method-arg`` values with their ``preset`` filled in (explicit keys win) -> the settings the trainer uses."""
    name = str(args.get("preset", "paper"))
    if name not in PRESETS:
        raise ValueError(f"--method-arg preset={name!r}: use one of {', '.join(PRESETS)}")
    return {**PRESETS[name], **{k: v for k, v in args.items() if k != "preset"}}
# Redraw depth of paired training. <sunball>, residual=query, 1,000 steps, 12 validation prompts x 2 seeds
# (look rate / text fid. / concept fid.): 0.4 -> 0.08 / 0.93 / 0.52, 0.7 -> 0.13 / 0.95 / 0.59, 0.85 -> 0.08 / 0.92 / 0.51
PAIRED_STRENGTH = 0.7
logger = logging.getLogger(__name__)


class InfusionMethod(Method):
    name = "infusion"
    default_lr = 1e-2  # paper 5.1: AdamW, lr 0.01, batch 4
    out_help = "an Infusion concept .safetensors file (one Delta per attn2 layer)"
    families = ("sd", "sdxl")
    method_args_example = "maps=own"
    method_args_help = {
        "preset": "a named form: paper (the default: the paper's Infusion) | recommended (maps=own train_t_max=0.5, "
                  "the best form measured on the built-in world); explicit keys override it",
        "residual": "value (the paper's constant Delta per layer, default) | query (Delta + a per-pixel term of C's own query)",
        "query_rank": "rank r of the query term (default 4)",
        "maps": "base (the Delta is placed by F's attn2 maps, the paper's, default) | own (by C's own map of the "
                "concept's tokens, whose key is the class word's; beyond the paper)",
        "t_max": "inject only at timesteps t < t_max * T, in training and generation (default 1.0: every step, the paper's)",
        "train_t_max": "train on timesteps t < train_t_max * T only (at most t_max), and inject at every "
                       "t < t_max * T in generation (default: t_max; maps=own train_t_max=0.5 learns the low-noise "
                       "half's Delta and uses it at every step; beyond the paper)",
        "paired": "F runs on base-model redraws of the training images (default false: on the images, the paper's)",
        "paired_strength": "how far the redraw starts from the image, fraction of T (default 0.7: on the world's "
                           "validation prompts it beats 0.4 and 0.85 on look rate, text and concept fidelity)",
        "paired_views": "redraws per training image (default 4)",
    }

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.args = args = expand_preset(cfg.method_args)
        if not cfg.method_args:  # the paper's form as a new user gets it: name the recommended one once
            logger.info(RECOMMENDED_HINT)
        self.unet = pipe.unet
        self.text_encoders = nn.ModuleList(text_encoders(pipe))  # SD: one; SDXL: two (their states concatenated)
        self.tokenizers = [t for t, _ in text_parts(pipe)]
        n_tokens = phrase_token_count(cfg.class_phrase, pipe.tokenizer)
        self.layers = layer_widths(self.unet)  # layer name -> D
        self.residual = str(args.get("residual", "value"))
        if self.residual not in RESIDUALS:
            raise ValueError(f"--method-arg residual={self.residual!r}: use one of {', '.join(RESIDUALS)}")
        self.maps = str(args.get("maps", "base"))
        if self.maps not in MAPS:
            raise ValueError(f"--method-arg maps={self.maps!r}: use one of {', '.join(MAPS)}")
        self.t_max = float(args.get("t_max", 1.0))
        self.paired = str(args.get("paired", False)).lower() in ("1", "true", "yes")
        if self.paired and self.family != "sd":
            raise ValueError("--method-arg paired=true supports Stable Diffusion 1.x/2.x models only")
        if self.paired and not 0 < float(args.get("paired_strength", PAIRED_STRENGTH)) <= 1:
            raise ValueError("--method-arg paired_strength must be in (0, 1] (a fraction of the training timesteps)")
        if self.paired and int(args.get("paired_views", 4)) < 1:
            raise ValueError("--method-arg paired_views must be >= 1")
        self._pipe = pipe
        self._f_latents = None  # (B, 4, h, w) F's noisy input of this step (paired training)
        if not 0 < self.t_max <= 1:
            raise ValueError(f"--method-arg t_max must be in (0, 1], got {self.t_max}")
        self.train_t_max = float(args.get("train_t_max", self.t_max))
        if not 0 < self.train_t_max <= self.t_max:  # above t_max the Delta would learn steps it is never added at
            raise ValueError(f"--method-arg train_t_max must be in (0, t_max = {self.t_max:g}], got {self.train_t_max}")
        dev = self.unet.device
        # Zero init: at step 0 C == F exactly.
        self.deltas = nn.ParameterDict(
            {param_key(n): nn.Parameter(torch.zeros(n_tokens, d, device=dev)) for n, d in self.layers.items()}
        )
        self.query_a = nn.ParameterDict()
        self.query_b = nn.ParameterDict()
        if self.residual == "query":
            r = int(args.get("query_rank", 4))
            if r < 1:
                raise ValueError(f"--method-arg query_rank must be >= 1, got {r}")
            g = torch.Generator().manual_seed(cfg.seed)
            for n, d in self.layers.items():
                bound = 1.0 / math.sqrt(d)  # nn.init.kaiming_uniform_(a=sqrt(5)) on a (r, d) weight, as LoRA's A
                a = (torch.rand(n_tokens, d, r, generator=g) * 2 - 1) * bound
                self.query_a[param_key(n)] = nn.Parameter(a.to(dev))
                self.query_b[param_key(n)] = nn.Parameter(torch.zeros(n_tokens, r, d, device=dev))
        for layer, proc in install_processors(self.unet).items():
            k = param_key(layer)
            proc.deltas = {cfg.name: self.deltas[k]}
            proc.query_terms = {cfg.name: (self.query_a[k], self.query_b[k])} if self.residual == "query" else {}
            proc.own_maps = {cfg.name} if self.maps == "own" else set()

    @torch.no_grad()
    def attach_latents(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Paired training: ``paired_views`` base-model redraws of each training latent -> self.redraws (V, M, 4, h, w)."""
        if not self.paired:
            return
        args = self.args
        strength, views = float(args.get("paired_strength", PAIRED_STRENGTH)), int(args.get("paired_views", 4))
        pipe = self._pipe
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        sched.set_timesteps(25)
        T = sched.config.num_train_timesteps
        steps = [t for t in sched.timesteps if t <= strength * T] or [sched.timesteps[-1]]  # at least one step
        ids = self.tokenizer([f"a photo of a {self.cfg.class_phrase}", ""], padding="max_length",
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        enc = self.text_encoders[0]
        cond, uncond = enc(ids.to(enc.device))[0].chunk(2)
        out = []
        for v in range(views):
            g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + v)
            z0 = mean.clone()
            noise = torch.randn(z0.shape, generator=g)
            z = sched.add_noise(z0, noise, torch.full((len(z0),), int(steps[0]))).to(self.unet.device, self.unet.dtype)
            text = torch.cat([uncond.expand(len(z), -1, -1), cond.expand(len(z), -1, -1)])
            for t in steps:
                e = self.unet(torch.cat([z, z]), t, encoder_hidden_states=text).sample
                eu, ec = e.chunk(2)
                z = sched.step(eu + 5.0 * (ec - eu), t, z).prev_sample
            out.append(z.float().cpu())
        self.register_buffer("redraws", torch.stack(out), persistent=False)  # (V, M, 4, h, w)

    def prepare_batch(self, idx, noise, t, noise_scheduler, generator) -> None:
        if not self.paired:
            return
        view = torch.randint(self.redraws.shape[0], (len(idx),), generator=generator)
        z0 = self.redraws[view, idx]  # (B, 4, h, w): a redraw of each row's image
        self._f_latents = noise_scheduler.add_noise(z0, noise, t)

    def max_train_timestep(self, num_train_timesteps: int) -> int:
        return max(1, int(round(self.train_t_max * num_train_timesteps)))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {n: p for n, p in self.deltas.items()}
        state.update({f"query_a.{n}": p for n, p in self.query_a.items()})
        state.update({f"query_b.{n}": p for n, p in self.query_b.items()})
        return state

    @torch.no_grad()
    def encode_captions(self, captions: list[str]) -> TextBatch:
        """Class phrase in place of ``<name>``; states as the family's pipeline makes them (SDXL: + pooled)."""
        parsed = [parse_prompt(c, {self.cfg.name: self.cfg.class_phrase}, self.tokenizer) for c in captions]
        texts = [p.text for p in parsed]
        ids = [tokenize(t, texts) for t in self.tokenizers]
        states, pooled = encode_ids(list(self.text_encoders), ids)  # (B, L, C), (B, P) | None
        return TextBatch(states, [p.spans for p in parsed], ids[0], pooled)

    def forward(self, noisy_latents, timesteps, text: TextBatch):
        """noisy_latents (B, 4, h, w), timesteps (B,) -> eps_C (B, 4, h, w)."""
        B = noisy_latents.shape[0]
        plan = InfusionPlan.build("record", B, list(range(B)), text.spans)
        f_in = noisy_latents
        if self.paired and self.training and self._f_latents is not None:  # F on the redraw (same noise and t)
            f_in = self._f_latents.to(noisy_latents.device, noisy_latents.dtype)
        with torch.no_grad():  # F: frozen base model, stores no activations
            self.unet(f_in, timesteps, cross_attention_kwargs={"infusion": plan}, **text.unet_cond())
        plan.mode = "inject"  # C: F's maps and outputs + Deltas (SDXL: F's pooled text and time ids too)
        return self.unet(noisy_latents, timesteps, cross_attention_kwargs={"infusion": plan}, **text.unet_cond()).sample

    def export(self, path, fingerprint: str) -> Concept:
        cpu = lambda p: p.detach().float().cpu()  # noqa: E731
        concept = Concept(
            name=self.cfg.name,
            class_phrase=self.cfg.class_phrase,
            deltas={n: cpu(self.deltas[param_key(n)]) for n in self.layers},
            base_model=str(self.cfg.model),
            base_fingerprint=fingerprint,
            method=self.name,
            training=self.cfg.file_settings(),
            query={n: (cpu(self.query_a[param_key(n)]), cpu(self.query_b[param_key(n)])) for n in self.layers}
            if self.residual == "query" else {},
            t_max=self.t_max,
            family=self.family,
            maps=self.maps,
        )
        concept.save(Path(path))
        return concept
