"""Class-prior images for prior preservation (DreamBooth, Ruiz et al. 2023, Eq. 2).

The base model generates ``n`` images of the class from the training templates with the class
phrase ("a photo of a cat"), once, before any weight changes; they are written as PNGs (with
their prompt, seed and base fingerprint) into ``<out>.prior/`` and reused by later runs on the
same base model and class (resume, or a second method). Their VAE posteriors feed the trainer's
prior loss.
"""

from __future__ import annotations

from pathlib import Path

import torch

from infusion.core.customization_files import output_parts
from infusion.core.images import read_png_params, save_png
from infusion.methods.base import PriorData
from infusion.training.data import caption_templates, encode_latent_stats, load_rgb, prepare_image


def prior_folder(out: str | Path) -> Path:
    """``runs/mycat.safetensors`` -> ``runs/mycat.prior/``."""
    out = Path(out)
    return out.with_name(output_parts(out)[0] + ".prior")


def prior_prompts(class_phrase: str, n: int, model="") -> list[str]:
    templates = caption_templates(model)
    return [templates[i % len(templates)].format(class_phrase) for i in range(n)]


@torch.no_grad()
def class_prior(pipe, cfg, fingerprint: str, n: int, steps: int, weight: float, guidance: float = 7.5) -> PriorData:
    """Generate (or reuse) ``n`` class images with the base ``pipe``; -> ``PriorData``."""
    if n < 1:
        raise ValueError(f"num_class_images must be >= 1 for prior preservation, got {n}")
    folder = prior_folder(cfg.out)
    resolution = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    prompts = prior_prompts(cfg.class_phrase, n, cfg.model)
    wanted = {"class_phrase": cfg.class_phrase, "base_fingerprint": fingerprint, "steps": steps,
              "guidance": guidance, "resolution": resolution}
    images = []
    for i, prompt in enumerate(prompts):
        path = folder / f"{i:04d}.png"
        if path.is_file():
            try:
                params = read_png_params(path)
            except (KeyError, ValueError, OSError):
                params = {}
            if all(params.get(k) == v for k, v in wanted.items()) and params.get("prompt") == prompt:
                images.append(prepare_image(load_rgb(path), resolution))
                continue
        g = torch.Generator().manual_seed(cfg.seed * 7919 + i)
        was_disabled = getattr(pipe, "_progress_bar_config", {}).get("disable", False)
        pipe.set_progress_bar_config(disable=True)
        im = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g, height=resolution,
                  width=resolution).images[0]
        pipe.set_progress_bar_config(disable=was_disabled)
        save_png(im, path, {**wanted, "prompt": prompt, "seed": cfg.seed * 7919 + i})
        images.append(prepare_image(im, resolution))
    mean, std = encode_latent_stats(pipe.vae, torch.stack(images), flip=False)  # (n, 4, h, w) each
    return PriorData(mean, std, prompts, weight)
