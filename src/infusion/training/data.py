"""Concept images -> cached VAE latents (with horizontal flips), and the caption templates of a model.

Robust to what people's folders hold: EXIF rotation, grayscale, palette, RGBA (composited on
white), CMYK, 16-bit, tiny and huge images; unreadable files are skipped with a warning, and an
empty or all-unreadable folder is a clear error. ``read_image`` is the one definition of a usable
image: the trainer reads a folder through it and the web page checks its uploads with it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from infusion.core.model_profiles import CAPTION_TEMPLATES, model_profile  # noqa: F401  (re-exported)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

def caption_templates(model) -> tuple[str, ...]:
    """The training caption templates for ``--model`` (its profile's: the world's own words on the world, else
    Textual Inversion's)."""
    return model_profile(model).caption_templates


MIN_SIDE = 32  # smaller images carry too little of the concept to learn from


def load_rgb(path: str | Path) -> PIL.Image.Image:
    """Open an image as 8-bit RGB, EXIF orientation applied. Raises ``ValueError`` if unreadable."""
    try:
        with PIL.Image.open(path) as im:
            im.load()
            im = PIL.ImageOps.exif_transpose(im)
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: rescale to 8 bit
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = PIL.Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8))  # 2-D uint8: "L"
    if im.mode == "F":  # 32-bit float grayscale (TIFF): [0, 1] as most tools write it, else [0, 255]
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        hi = 1.0 if a.max() <= 1.0 else 255.0
        im = PIL.Image.fromarray(np.clip(np.rint(a / hi * 255.0), 0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        bg = PIL.Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im.convert("RGBA"), mask=im.convert("RGBA").split()[-1])
        im = bg
    return im.convert("RGB")


def read_image(path: str | Path) -> PIL.Image.Image:
    """The one test of a usable training image, for the trainer and the web page's upload check alike: a file
    whose suffix is one of ``IMAGE_SUFFIXES``, readable, at least ``MIN_SIDE`` px on its shorter side.
    -> 8-bit RGB (``load_rgb``); ``ValueError`` that names the file and says why not."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path.name} is not an image file the trainer reads (use {', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        im = load_rgb(path)
    except ValueError:
        raise ValueError(f"{path.name} is not an image that can be read (a damaged or mislabelled file?)") from None
    if min(im.size) < MIN_SIDE:
        raise ValueError(f"{path.name} is {im.size[0]}x{im.size[1]}: images need at least {MIN_SIDE} px on each side")
    return im


def crop_box(size: tuple[int, int], resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """What ``prepare_image`` does to an image of ``size`` (w, h), as SDXL's micro-conditioning states it:
    (original (h, w), crop top-left (y, x) in the resized image's pixels, as diffusers' SDXL scripts compute it)."""
    w, h = size
    s = min(w, h)
    scale = resolution / s
    return (h, w), (int(round((h - s) // 2 * scale)), int(round((w - s) // 2 * scale)))


def prepare_image(im: PIL.Image.Image, resolution: int) -> torch.Tensor:
    """Center-crop to square, resize to ``resolution``; -> tensor [3, R, R] in [-1, 1]."""
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((resolution, resolution), PIL.Image.Resampling.BICUBIC)
    a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return a.permute(2, 0, 1).contiguous()


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"--images must be a folder of images, got a file: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        inner = sorted(d for d in folder.iterdir() if d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES
                                                                          for p in d.iterdir()))
        hint = f"; its subfolder {inner[0].name} has some: --images {inner[0]}" if inner else ""
        raise ValueError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){hint}")
    return files


def load_concept_images(folder: str | Path, resolution: int, with_sizes: bool = False):
    """All usable images of ``folder`` -> [N, 3, R, R] in [-1, 1]; with ``with_sizes`` also each image's
    ``crop_box`` (original size, crop top-left), for SDXL's micro-conditioning."""
    out, sizes = [], []
    for p in find_images(folder):
        try:
            im = read_image(p)
        except ValueError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        out.append(prepare_image(im, resolution))
        sizes.append(crop_box(im.size, resolution))
    if not out:
        raise ValueError(f"none of the images in {folder} could be used (unreadable or smaller than {MIN_SIDE} px)")
    return (torch.stack(out), sizes) if with_sizes else torch.stack(out)


@torch.no_grad()
def encode_latent_stats(vae, images: torch.Tensor, flip: bool = True, batch_size: int = 8):
    """VAE posterior of each image (and of its mirror image when ``flip``).

    images [N, 3, R, R] -> (mean, std), each [N or 2N, 4, R/8, R/8]. A latent is sampled per
    step from these (as diffusers' training scripts do), so caching loses nothing.
    """
    if flip:
        images = torch.cat([images, images.flip(-1)])
    means, stds = [], []
    for chunk in images.split(batch_size):
        dist = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)
