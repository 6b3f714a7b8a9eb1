"""A rendered image set of the world, cached once as a uint8 safetensors file.

Images are fully determined by their seeds (``scenes.example``), so the cache holds pixels only;
captions are re-drawn from the seeds (several captions per image: text augmentation for free).
"""

from __future__ import annotations

import logging
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from infusion.world import scenes

log = logging.getLogger(__name__)

TRAIN_SEEDS = range(0, 1_000_000)  # the model and probes train on seeds below 1e6
PATTERNED_SEED = 2_000_000  # the patterned set (every object patterned, ``patterned_scene``) starts here
HELD_OUT_SEED = 10_000_000  # evaluation scenes and captions start here


def patterned_scene(index: int) -> scenes.Scene:
    """Scene ``index`` of the patterned set: every object carries a pattern (the model learns to draw named ones)."""
    return scenes.sample_scene(PATTERNED_SEED + index, pattern_rate=1.0)


def _render_seed(seed: int) -> np.ndarray:
    return np.asarray(scenes.render(scenes.sample_scene(seed)))


def _render_patterned(index: int) -> np.ndarray:
    return np.asarray(scenes.render(patterned_scene(index)))


def render_images(seeds, workers: int = 2, desc: str = "render", patterned: bool = False) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 images of ``seeds`` (indices of the patterned set with ``patterned``)."""
    seeds = list(seeds)
    with Pool(workers) as pool:
        fn = _render_patterned if patterned else _render_seed
        arrs = list(tqdm(pool.imap(fn, seeds, chunksize=256), total=len(seeds), desc=desc, mininterval=10))
    return torch.from_numpy(np.stack(arrs))


def cached_images(path: str | Path, n: int, workers: int = 2, patterned: bool = False) -> torch.Tensor:
    """Images of seeds ``0..n-1`` (of the patterned set with ``patterned``), rendered once into ``path``
    (safetensors) and reloaded after."""
    path = Path(path)
    if path.exists():
        images = load_file(str(path))["images"]
        if len(images) >= n:
            return images[:n]
        log.info("cache %s holds %d images, %d wanted: re-rendering", path, len(images), n)
    images = render_images(range(n), workers, patterned=patterned)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"images": images.contiguous()}, str(tmp))
    tmp.replace(path)
    return images


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
