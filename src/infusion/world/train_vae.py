"""Stage 1 of the world model: an AutoencoderKL on rendered scenes, then a latent cache.

Loss: L1 + MSE on pixels + a small KL (as Stable Diffusion's VAE: a near-deterministic
autoencoder whose latent scale is fixed afterwards by ``scaling_factor`` = 1 / std).
Resumable: one checkpoint file, overwritten in place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from infusion.world import model_dir
from infusion.world.architecture import build_vae
from infusion.world.checkpoint import load_checkpoint, save_checkpoint
from infusion.world.dataset import cached_images, to_model_range

log = logging.getLogger(__name__)


@dataclass
class VAEConfig:
    work: str = "runs/world"  # caches, samples, exported VAE
    checkpoint: str = "checkpoints/world_vae.safetensors"
    n_images: int = 40_000
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-5  # relative to the per-pixel reconstruction loss
    max_minutes: float = 1e9  # stop (after a checkpoint) once this much wall time is spent
    seed: int = 0
    threads: int = 1


def save_grid(images: torch.Tensor, path: Path, cols: int = 8, scale: int = 3) -> None:
    """(B, 3, H, W) in [-1, 1] -> one PNG grid, upscaled ``scale`` x for viewing."""
    b, _, h, w = images.shape
    rows = (b + cols - 1) // cols
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    grid = Image.new("RGB", (cols * (w + 2), rows * (h + 2)), "white")
    for i in range(b):
        grid.paste(Image.fromarray(arr[i]), ((i % cols) * (w + 2), (i // cols) * (h + 2)))
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)


def vae_loss(vae, x: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """x (B, 3, H, W) in [-1, 1] -> scalar loss."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    kl = post.kl().mean() / x[0].numel()
    return (rec - x).abs().mean() + (rec - x).pow(2).mean() + kl_weight * kl


def train_vae(cfg: VAEConfig):
    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work)
    (work / "samples").mkdir(parents=True, exist_ok=True)
    images = cached_images(work / "images.safetensors", cfg.n_images)
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    if Path(cfg.checkpoint).exists():
        step = load_checkpoint(cfg.checkpoint, {"vae": vae}, opt)["step"]
        log.info("resumed VAE from %s at step %d", cfg.checkpoint, step)
    _autoencoder_loop(cfg, images, vae, {"vae": vae}, opt, step, "vae",
                      lambda x, gen: vae_loss(vae, x, cfg.kl_weight))
    return vae


@torch.no_grad()
def finish_vae(cfg: VAEConfig, batch: int = 256):
    """Fix ``scaling_factor`` from latent statistics, save the VAE, cache latent mean and std.

    Writes ``work/vae`` (diffusers) and ``work/latents.safetensors``: ``mean``/``std`` (N, 4, 8, 8) fp16.
    """
    torch.set_num_threads(cfg.threads)
    vae = build_vae()
    load_checkpoint(cfg.checkpoint, {"vae": vae}, None)
    encode_latents(vae, cfg, set_scale=True)
    return vae


@torch.no_grad()
def encode_latents(vae, cfg: VAEConfig, batch: int = 256, set_scale: bool = False, patterned: int = 0) -> None:
    """Cache latent mean/std of the rendered images; with ``set_scale`` also fix and save the VAE. With
    ``patterned`` > 0: that many images of the patterned set instead (``work/latents_patterned.safetensors``)."""
    work = Path(cfg.work)
    stem = "_patterned" if patterned else ""
    images = cached_images(work / f"images{stem}.safetensors", patterned or cfg.n_images, patterned=bool(patterned))
    vae.eval()
    means, stds = [], []
    for i in tqdm(range(0, len(images), batch), desc="encode", mininterval=30):
        post = vae.encode(to_model_range(images[i : i + batch])).latent_dist
        means.append(post.mean.half())
        stds.append(post.std.half())
    mean, std = torch.cat(means), torch.cat(stds)
    if set_scale:
        scale = 1.0 / mean[:4096].float().std().item()
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(work / "vae")
        log.info("VAE scaling_factor %.4f", scale)
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(work / f"latents{stem}.safetensors"))
    log.info("cached %d latents in %s", len(mean), work / f"latents{stem}.safetensors")


@dataclass
class DecoderConfig:
    """Fine-tune only the VAE's decoder: the encoder, and so every cached latent the UNet trained on, stay bit-identical."""

    work: str = "runs/world"
    vae: str = ""  # diffusers VAE folder to start from ("" = the packaged model's)
    checkpoint: str = "runs/world/vae_decoder.safetensors"
    out: str = "runs/world/vae"  # diffusers folder written at every checkpoint (what `world train model` then exports)
    n_images: int = 40_000
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    max_minutes: float = 1e9
    seed: int = 0
    threads: int = 1


def finetune_decoder(cfg: DecoderConfig):
    """Why: the decoder trained with the first world (fine stripes, dots) blurred every pattern; after
    the world's patterns became coarse (``scenes.PATTERNS``), a decoder-only fine-tune teaches it to
    draw them without touching the latent space the UNet models."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work)
    (work / "samples").mkdir(parents=True, exist_ok=True)
    images = cached_images(work / "images.safetensors", cfg.n_images)
    vae = AutoencoderKL.from_pretrained(cfg.vae or str(model_dir() / "vae"))
    vae.requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    modules = {"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv}
    step = 0
    if Path(cfg.checkpoint).exists():
        step = load_checkpoint(cfg.checkpoint, modules, opt)["step"]
        log.info("resumed decoder from %s at step %d", cfg.checkpoint, step)

    def decoder_loss(x, gen):
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        return (rec - x).abs().mean() + (rec - x).pow(2).mean()

    _autoencoder_loop(cfg, images, vae, modules, opt, step, "decoder", decoder_loss, export=cfg.out)
    return vae


def _autoencoder_loop(cfg, images, vae, modules, opt, step, desc, loss_fn, export: str | None = None) -> None:
    """Train ``modules`` of ``vae`` from ``step`` to ``cfg.steps`` on random batches of ``images`` (uint8, the
    last 16 held out for the sample grid); every 100 steps: checkpoint, ``export`` folder, grid ``<desc>_latest.png``."""
    work = Path(cfg.work)
    gen = torch.Generator().manual_seed(cfg.seed + step)
    held = to_model_range(images[-16:])
    t0 = time.time()
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc=desc, mininterval=30)
    for step in bar:
        idx = torch.randint(0, len(images) - 16, (cfg.batch_size,), generator=gen)
        loss = loss_fn(to_model_range(images[idx]), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        done = step + 1
        out_of_time = (time.time() - t0) / 60 > cfg.max_minutes
        if done % 100 == 0 or done == cfg.steps or out_of_time:
            save_checkpoint(cfg.checkpoint, modules, opt, {"step": done, "config": asdict(cfg)})
            if export:
                vae.save_pretrained(export)
            with torch.no_grad():
                rec = vae.decode(vae.encode(held).latent_dist.mode()).sample
            save_grid(torch.cat([held, rec]), work / "samples" / f"{desc}_latest.png")
            log.info("%s step %d loss %.4f", desc, done, loss.item())
        if out_of_time:
            break
