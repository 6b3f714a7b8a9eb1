"""Stage 2 of the world model: UNet + CLIP text encoder, jointly from scratch, on cached latents.

v-prediction on Stable Diffusion's betas rescaled to zero terminal SNR (``architecture.build_scheduler``
says why; steps up to 8,101 were trained with epsilon-prediction on the plain schedule and the
UNet was then fine-tuned), Min-SNR-5 loss weights (Hang et al. 2023: faster convergence; in x0
terms min(SNR + 1, 5) for v, so that t = T with SNR 0 still counts), caption dropout for classifier-free guidance, an EMA of the weights
(exported: it samples better than the raw weights). Each image gets a freshly drawn caption every
time it is used (``scenes.caption_scene`` with a new seed: text augmentation). Resumable from one
checkpoint file; ``export`` writes the diffusers folder the rest of the project loads.

The text encoder trains only in the step ranges ``text_encoder_trains``; outside them it stays
frozen at its EMA weights while the UNet goes on: what is built on the text encoder's hidden
states (the MLM contextualizer of ``infusion.mlm``, concept files' fingerprints) stays valid as the
UNet improves, and a step without the text encoder's backward pass is cheaper. When a range
starts again, the text encoder continues from its EMA with fresh Adam moments. Shipped history:
trained in [0, 1300) (with epsilon-prediction), frozen until 8,101, trained again from 8,101 with
the v-prediction/zero-terminal-SNR schedule: frozen, it never separated "top" from "bottom"
(measured by stop 10: hidden-state cosine 0.98), so no UNet could follow position words.

``token_loss_weight`` adds TokenCompose's L_token (``token_loss``): the class word's
cross-attention should fall inside its object's box, so the maps Infusion reuses are localised.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from infusion.core.model_configs import load_tokenizer
from infusion.world import model_dir, scenes
from infusion.world.architecture import assemble_pipeline, build_scheduler, build_text_encoder, build_unet
from infusion.world.checkpoint import load_checkpoint, save_checkpoint
from infusion.world.dataset import patterned_scene
from infusion.world.token_loss import class_token_targets, install_recorders, token_loss
from infusion.world.train_vae import save_grid

log = logging.getLogger(__name__)

SAMPLE_PROMPTS = [
    "a photo of a large red ball on the grass, top left",
    "a small blue box on the snow in the bottom right corner",
    "a large yellow star under the night sky, in the center",
    "a green tree on the sand",
    "a white mug in front of a brick wall",
    "a large purple house on the road at the top right",
    "an orange ball and a pink star on a wooden floor",
    "a photo of a ball",
]


@dataclass
class ModelConfig:
    work: str = "runs/world"  # holds vae/ and latents.safetensors from stage 1
    checkpoint: str = "checkpoints/world_train.safetensors"
    export_dir: str = ""  # diffusers folder to export to ("" = the packaged model folder)
    steps: int = 20_000
    batch_size: int = 64
    lr: float = 6e-4
    warmup: int = 100
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    # step ranges [start, stop) in which the text encoder trains (stop None: open); frozen at its EMA elsewhere
    text_encoder_trains: tuple = ((0, 1300), (8101, None))
    token_loss_weight: float = 0.1  # TokenCompose's L_token on the class words' attn2 maps (0: off)
    # The caption recipe (what the shipped world used, and from which step: world/recipe.py SHIPPED_RECIPE, which
    # `infusion world train model` defaults to; the defaults here are all off, so that a fresh model starts plain).
    # The patterned set (``dataset.patterned_scene``: every object patterned, captions name colour and pattern):
    # how many images, and the share of each batch drawn from it (0: none)
    patterned_images: int = 0
    patterned_share: float = 0.0
    name_patterns: float = 0.0  # probability that a caption of the main set names a patterned object's pattern
    # probability that a captioned row's EOS and padding states are replaced by the empty caption's (``drop_summary``):
    # the UNet then has to read what the caption says from its words, the class word among them
    summary_dropout: float = 0.0
    # probability that a captioned row's look words (colours, "and", pattern words) are hidden from the UNet's
    # cross-attention (``look_word_mask``): the causal text encoder has folded them into the class word's state, so
    # the UNet learns to draw the look from there, as Stable Diffusion draws a zebra from "zebra"
    hide_look_words: float = 0.0
    # with ``hide_look_words``: the hidden rows' other positions (all but the class words) take their states from the
    # caption with its look words removed (``look_only_in_class_words``), so that the look lives in the class words only
    look_only_in_class_words: bool = False
    # with ``look_only_in_class_words``: probability that a hidden row's class words meet the UNet's attn2 with the
    # *look-free* caption's state as their key and the captioned one as their value (``class_keys_from_look_free``):
    # the maps are then the plain caption's and only the value tells the look, which is what key-locked methods
    # (Perfusion) and Infusion (C reuses F's maps) assume of Stable Diffusion
    look_in_class_values: float = 0.0
    prediction_type: str = "v_prediction"  # or "epsilon" (steps <= 8,101 of the shipped model)
    zero_terminal_snr: bool = True
    export_every: int = 100
    samples: bool = True  # write a sample grid (work/samples/model_latest.png) at every export
    max_minutes: float = 1e9
    seed: int = 0
    threads: int = 1


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


NAME_THE_LOOK = {"color": 0.0, "pattern": 0.0}  # the patterned set's captions always name colour and pattern


def _captions(batch_idx: torch.Tensor, rng: random.Random, dropout: float, patterned: bool = False,
              name_patterns: float = 0.0) -> tuple[list[str], list[scenes.Scene]]:
    """A freshly drawn caption ("" with probability ``dropout``) and the scene of every image index (of the
    patterned set with ``patterned``)."""

    texts, batch_scenes = [], []
    for i in batch_idx.tolist():
        scene = patterned_scene(i) if patterned else scenes.sample_scene(i)
        batch_scenes.append(scene)
        drop = NAME_THE_LOOK if patterned else {"pattern": 1.0 - name_patterns}
        texts.append("" if rng.random() < dropout else scenes.caption_scene(scene, rng.randrange(2**31), drop).text)
    return texts, batch_scenes


def drop_summary(cond: torch.Tensor, ids: torch.Tensor, empty: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Replace the summary positions (EOS and the padding after it) of ``rows`` by the empty caption's states.

    cond (B, L, D) text states; ids (B, L) their token ids (CLIP: EOS has the largest id, so ``argmax`` finds it);
    empty (L, D) the states of ""; rows (B,) bool. A causal text encoder lets EOS and the padding summarise the whole
    caption, and a UNet trained on them reads an object's look there rather than from the object's words (measured:
    studies/world_look_source.py); a value residual on the class word cannot reach what is read there.
    """
    L = ids.shape[1]
    after_eos = torch.arange(L)[None, :] >= ids.argmax(dim=1)[:, None]  # (B, L)
    keep = ~(after_eos & rows[:, None])
    return torch.where(keep[..., None], cond, empty[None].to(cond.dtype))


LOOK_WORDS = frozenset(list(scenes.COLORS) + ["and"] + list(scenes.PATTERN_WORDS.values()))
"""Every word that describes an object's look: colour names, "and", the pattern words."""


def look_word_ids(tokenizer) -> torch.Tensor:
    """(N,) token ids of the ``LOOK_WORDS``."""
    return torch.tensor(sorted({i for w in LOOK_WORDS for i in tokenizer(w, add_special_tokens=False).input_ids}))


def look_word_mask(ids: torch.Tensor, look_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, L) cross-attention mask (1 keep, 0 hide): the look words of ``rows`` hidden, everything else kept.

    ids (B, L) token ids; look_ids (N,) from ``look_word_ids``; rows (B,) bool. The UNet passes it to every attn2 as
    ``encoder_attention_mask``, so a hidden position's weight is exactly 0.
    """
    hide = torch.isin(ids, look_ids) & rows[:, None]
    return (~hide).to(torch.float32)


def without_look_words(text: str) -> str:
    """``text`` with its ``LOOK_WORDS`` removed ("a red and blue dipped ball" -> "a ball")."""
    return " ".join(w for w in text.split() if w not in LOOK_WORDS)


def _from_look_free(cond: torch.Tensor, ids: torch.Tensor, free_cond: torch.Tensor, free_ids: torch.Tensor,
                    look_ids: torch.Tensor, class_ids: torch.Tensor, rows: torch.Tensor, class_words: bool) -> torch.Tensor:
    """``cond`` with, in ``rows``, the class words (``class_words``) or every other kept position taking the state of
    its counterpart in the look-free caption: the k-th kept token (not a look word) is the look-free caption's k-th
    token. A row whose kept tokens do not match the look-free caption's is left as it is."""
    out = cond.clone()
    for r in rows.nonzero().flatten().tolist():
        kept = (~torch.isin(ids[r], look_ids)).nonzero().flatten()  # (K,)
        if not torch.equal(free_ids[r, : len(kept)], ids[r, kept]):
            continue
        swap = torch.isin(ids[r, kept], class_ids) == class_words
        out[r, kept[swap]] = free_cond[r, : len(kept)][swap]
    return out


def look_only_in_class_words(cond: torch.Tensor, ids: torch.Tensor, free_cond: torch.Tensor, free_ids: torch.Tensor,
                             look_ids: torch.Tensor, class_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """States in which a row's look is carried by its class words only.

    cond, free_cond (B, L, D): the text states of the captions and of the same captions without their look words
    (``without_look_words``); ids, free_ids (B, L) their token ids; rows (B,) bool. In a chosen row every position
    that is neither a look word nor a class word takes the state of its counterpart in the look-free caption (the
    k-th kept token is the look-free caption's k-th token); the class words keep theirs, which a causal text encoder
    has computed with the look words in view. Look words keep theirs too: ``look_word_mask`` hides them.
    A row whose kept tokens do not match the look-free caption's is left as it is.
    """
    return _from_look_free(cond, ids, free_cond, free_ids, look_ids, class_ids, rows, class_words=False)


def class_keys_from_look_free(cond: torch.Tensor, ids: torch.Tensor, free_cond: torch.Tensor, free_ids: torch.Tensor,
                              look_ids: torch.Tensor, class_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The states attn2 computes its *keys* from: ``cond`` with the class words of ``rows`` taking their state in the
    look-free caption (the counterpart of ``look_only_in_class_words``).

    cond, free_cond (B, L, D); ids, free_ids (B, L); rows (B,) bool. With ``look_only_in_class_words`` applied to
    ``cond`` first, a chosen row's keys are then the plain caption's everywhere (look words are masked), so its maps
    are the plain caption's and the look reaches the UNet through the class words' values only.
    """
    return _from_look_free(cond, ids, free_cond, free_ids, look_ids, class_ids, rows, class_words=True)


def text_encoder_trains_at(step: int, ranges) -> bool:
    """Whether ``step`` lies in one of the ``[start, stop)`` ranges (``stop`` None: no end)."""
    return any(start <= step and (stop is None or step < stop) for start, stop in ranges)


def train_model(cfg: ModelConfig):
    if not (0 <= cfg.patterned_share < 1 and 0 <= cfg.name_patterns <= 1 and cfg.patterned_images >= 0):
        raise ValueError(f"patterned_share must be in [0, 1), name_patterns in [0, 1], patterned_images >= 0: {cfg}")
    if not 0 <= cfg.summary_dropout <= 1:
        raise ValueError(f"summary_dropout must be in [0, 1], got {cfg.summary_dropout}")
    if not 0 <= cfg.hide_look_words <= 1:
        raise ValueError(f"hide_look_words must be in [0, 1], got {cfg.hide_look_words}")
    if not 0 <= cfg.look_in_class_values <= 1:
        raise ValueError(f"look_in_class_values must be in [0, 1], got {cfg.look_in_class_values}")
    if cfg.look_in_class_values > 0 and not cfg.look_only_in_class_words:
        raise ValueError("look_in_class_values works on the rows look_only_in_class_words rewrites: turn it on "
                         "(command line: --look-only-in-class-words, or --look-in-class-values 0)")
    if cfg.look_only_in_class_words and cfg.hide_look_words == 0:
        raise ValueError("look_only_in_class_words works on the rows hide_look_words chooses: set hide_look_words > 0 "
                         "(command line: --hide-look-words P, or turn it off with --no-look-only-in-class-words)")
    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work)
    (work / "samples").mkdir(parents=True, exist_ok=True)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(_frozen_vae_dir(work))
    if not (work / "latents.safetensors").exists():  # a fresh machine: re-render and re-encode once
        from infusion.world.train_vae import VAEConfig, encode_latents

        encode_latents(vae, VAEConfig(work=str(work)))
    lat = load_file(str(work / "latents.safetensors"))
    mean, std = lat["mean"], lat["std"]
    n = len(mean)
    n_pat = round(cfg.batch_size * cfg.patterned_share) if cfg.patterned_images else 0
    if n_pat:
        if not (work / "latents_patterned.safetensors").exists():
            from infusion.world.train_vae import VAEConfig, encode_latents

            encode_latents(vae, VAEConfig(work=str(work)), patterned=cfg.patterned_images)
        pat = load_file(str(work / "latents_patterned.safetensors"))
        mean_p, std_p = pat["mean"][: cfg.patterned_images], pat["std"][: cfg.patterned_images]
    tokenizer = load_tokenizer()
    torch.manual_seed(cfg.seed)
    unet, text_encoder = build_unet(), build_text_encoder(tokenizer)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    # The EMA weights are what `export` writes; the (committed) checkpoint holds only the raw
    # weights and bf16 Adam moments, and takes the EMA back from the exported folder.
    modules = {"unet": unet, "text_encoder": text_encoder}
    step = 0
    if Path(cfg.checkpoint).exists():
        meta = load_checkpoint(cfg.checkpoint, {**modules, "ema_unet": ema_unet, "ema_text_encoder": ema_text}, opt,
                               optional=("ema_unet", "ema_text_encoder"))
        step = meta["step"]
        if meta["missing"]:
            _load_exported_ema(cfg, step, ema_unet, ema_text, unet, text_encoder)
        log.info("resumed from %s at step %d", cfg.checkpoint, step)
        if step >= cfg.steps:  # a resume that would silently do nothing (the shipped world is past the default)
            log.warning("%s is at step %d, not before steps=%d: nothing to train (command line: --steps N, N > %d)",
                        cfg.checkpoint, step, cfg.steps, step)
            return
    # the state the last finished step left; the loop switches when ``step`` enters or leaves a range
    text_trains = text_encoder_trains_at(max(step - 1, 0), cfg.text_encoder_trains)
    if not text_trains:
        _freeze_text_encoder(text_encoder, ema_text)
    # ema_unet keeps stock processors; the recorders also take the separate key states of look_in_class_values
    token_loss_on = cfg.token_loss_weight > 0
    recorders = install_recorders(unet) if token_loss_on or cfg.look_in_class_values > 0 else {}
    sched = build_scheduler(cfg.prediction_type, cfg.zero_terminal_snr)
    alphas = sched.alphas_cumprod  # (1000,)
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(cfg.seed + 1000003 * step)
    rng = random.Random(cfg.seed + step)
    sf = vae.config.scaling_factor
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids  # (1, 77)
    look_ids = look_word_ids(tokenizer)
    class_ids = torch.tensor([tokenizer.convert_tokens_to_ids(c + "</w>") for c in scenes.CLASSES])
    t0 = time.time()
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc="unet+text", mininterval=30)
    for step in bar:
        if text_encoder_trains_at(step, cfg.text_encoder_trains) != text_trains:
            text_trains = not text_trains
            if text_trains:
                _unfreeze_text_encoder(text_encoder, ema_text, opt)
            else:
                _freeze_text_encoder(text_encoder, ema_text)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        idx = torch.randint(0, n, (cfg.batch_size - n_pat,), generator=gen)
        z0 = (mean[idx].float() + std[idx].float() * torch.randn(mean[idx].shape, generator=gen)) * sf  # (B, 4, 8, 8)
        texts, batch_scenes = _captions(idx, rng, cfg.caption_dropout, name_patterns=cfg.name_patterns)
        if n_pat:
            idx_p = torch.randint(0, len(mean_p), (n_pat,), generator=gen)
            z0 = torch.cat([z0, (mean_p[idx_p].float() + std_p[idx_p].float() * torch.randn(mean_p[idx_p].shape, generator=gen)) * sf])
            texts_p, scenes_p = _captions(idx_p, rng, cfg.caption_dropout, patterned=True)
            texts, batch_scenes = texts + texts_p, batch_scenes + scenes_p
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (cfg.batch_size,), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        captioned = torch.tensor([c != "" for c in texts])  # (B,) rows whose caption was not dropped
        drop_rows = None
        if cfg.summary_dropout > 0:  # one more row: the empty caption, whose summary states replace the dropped rows'
            drop_rows = (torch.rand(len(texts), generator=gen) < cfg.summary_dropout) & captioned
            ids = torch.cat([ids, empty_ids])
        hide_rows = None
        if cfg.hide_look_words > 0:
            hide_rows = (torch.rand(len(texts), generator=gen) < cfg.hide_look_words) & captioned
        n_free = 0
        if hide_rows is not None and cfg.look_only_in_class_words:  # one more row per caption: its look-free version
            free_ids = tokenizer([without_look_words(c) for c in texts], padding="max_length",
                                 max_length=77, truncation=True, return_tensors="pt").input_ids
            n_free = len(texts)
            ids = torch.cat([ids, free_ids]) if drop_rows is None else torch.cat([ids[:-1], free_ids, ids[-1:]])
        with torch.set_grad_enabled(text_trains):
            cond = text_encoder(ids)[0]  # (B, 77, D)
        if drop_rows is not None:
            ids, empty, cond = ids[:-1], cond[-1], cond[:-1]
        key_cond = None  # (B, L, D) states of attn2's keys when they differ from ``cond`` (look_in_class_values)
        if n_free:
            B = len(texts)
            free_cond, free_ids = cond[B:], ids[B:]
            cond = look_only_in_class_words(cond[:B], ids[:B], free_cond, free_ids, look_ids, class_ids, hide_rows)
            ids = ids[:B]
            if cfg.look_in_class_values > 0:
                value_rows = hide_rows & (torch.rand(B, generator=gen) < cfg.look_in_class_values)
                key_cond = class_keys_from_look_free(cond, ids, free_cond, free_ids, look_ids, class_ids, value_rows)
        if drop_rows is not None:
            cond = drop_summary(cond, ids, empty, drop_rows)
            key_cond = None if key_cond is None else drop_summary(key_cond, ids, empty, drop_rows)
        for rec in recorders.values():
            rec.key_context = key_cond
        mask = None
        if hide_rows is not None:
            mask = look_word_mask(ids, look_ids, hide_rows)
        pred = unet(zt, t, cond, encoder_attention_mask=mask).sample
        if cfg.prediction_type == "v_prediction":
            target = sched.get_velocity(z0, noise, t)
            weight = torch.clamp(snr[t] + 1, max=cfg.min_snr_gamma) / (snr[t] + 1)
        else:
            target = noise
            weight = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]  # Min-SNR for eps-prediction
        loss = diff_loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        if token_loss_on:
            tok_loss = token_loss(recorders, class_token_targets(ids, batch_scenes, tokenizer))
            loss = loss + cfg.token_loss_weight * tok_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        if text_trains:
            _ema_update(ema_text, text_encoder, decay)
        bar.set_postfix(loss=f"{diff_loss.item():.4f}", tok=f"{tok_loss.item():.3f}" if token_loss_on else "-", refresh=False)
        done = step + 1
        out_of_time = (time.time() - t0) / 60 > cfg.max_minutes
        if done % cfg.export_every == 0 or done == cfg.steps or out_of_time:
            save_checkpoint(cfg.checkpoint, modules, opt, {"step": done, "config": asdict(cfg)}, moments_dtype=torch.bfloat16)
            pipe = assemble_pipeline(vae, ema_text, ema_unet, tokenizer, scheduler=sched)
            export(pipe, cfg, done)
            if cfg.samples:
                sample_grid(pipe, work / "samples" / "model_latest.png")
            log.info("step %d loss %.4f token loss %.4f (%.1f min)", done, diff_loss.item(), tok_loss.item() if token_loss_on else 0.0,
                     (time.time() - t0) / 60)
        if out_of_time:
            break


def _freeze_text_encoder(text_encoder: torch.nn.Module, ema_text: torch.nn.Module) -> None:
    """Train on (and export) the EMA text encoder from now on; no gradients reach it (AdamW skips it)."""
    text_encoder.load_state_dict(ema_text.state_dict())
    text_encoder.requires_grad_(False)
    log.info("text encoder frozen at its EMA weights")


def _unfreeze_text_encoder(text_encoder: torch.nn.Module, ema_text: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """A training range starts: continue from the EMA weights with fresh Adam moments (old ones are stale)."""
    text_encoder.load_state_dict(ema_text.state_dict())
    text_encoder.requires_grad_(True)
    for p in text_encoder.parameters():
        opt.state.pop(p, None)
    log.info("text encoder trains again (from its EMA, fresh Adam moments)")


def _load_exported_ema(cfg: ModelConfig, step: int, ema_unet, ema_text, unet, text_encoder) -> None:
    """EMA weights from the exported folder when it was written at ``step``; else the raw weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    out = Path(cfg.export_dir) if cfg.export_dir else model_dir()
    state = out / "training_state.json"
    if state.exists() and json.loads(state.read_text()).get("step") == step:
        ema_unet.load_state_dict(UNet2DConditionModel.from_pretrained(out / "unet").state_dict())
        ema_text.load_state_dict(CLIPTextModel.from_pretrained(out / "text_encoder").state_dict())
    else:
        log.warning("no exported EMA weights of step %d in %s: the EMA restarts from the current weights", step, out)
        ema_unet.load_state_dict(unet.state_dict())
        ema_text.load_state_dict(text_encoder.state_dict())


def _frozen_vae_dir(work: Path) -> Path:
    """The VAE stage 2 trains on: ``work/vae`` from stage 1, else the packaged model's VAE (resume on a fresh machine)."""

    for d in (work / "vae", model_dir() / "vae"):
        if (d / "config.json").exists():
            return d
    raise FileNotFoundError(f"no trained VAE in {work / 'vae'} or {model_dir() / 'vae'}: run `infusion world train vae` first")


def export(pipe, cfg: ModelConfig, step: int) -> Path:
    """Save ``pipe`` (diffusers layout, float32 safetensors) and a small training-state note."""

    out = Path(cfg.export_dir) if cfg.export_dir else model_dir()
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "training_state.json").write_text(json.dumps({"step": step, "batch_size": cfg.batch_size, "lr": cfg.lr}, indent=1) + "\n")
    return out


@torch.no_grad()
def sample_grid(pipe, path: Path, prompts=SAMPLE_PROMPTS, per_prompt: int = 4, steps: int = 25, guidance: float = 5.0) -> None:
    """A grid: one row per prompt, ``per_prompt`` seeds each."""
    g = torch.Generator().manual_seed(0)
    out = pipe(list(prompts) * 1, num_images_per_prompt=per_prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="pt").images
    save_grid(out * 2 - 1, path, cols=per_prompt)
