"""Shared fixtures: tiny Stable Diffusion pipelines built from configs (random weights, real tokenizer)."""

import os
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture
def tiny_pipe():
    """A fresh tiny StableDiffusionPipeline (same weights every time: seeded)."""
    from infusion.core.model_configs import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="session")
def tokenizer():
    from infusion.core.model_configs import load_tokenizer

    return load_tokenizer()


def write_square_images(folder, n: int = 5, size: int = 48, stripes: bool = True):
    """``n`` noisy PNGs of a red square (blue stripes on it with ``stripes``) on grey, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lo, hi = size // 4, 3 * size // 4
    for i in range(n):
        a = np.full((size, size, 3), 220, np.uint8)
        a[lo:hi, lo:hi] = (200, 40, 40)
        if stripes:
            a[lo:hi:4, lo:hi] = (30, 30, 200)
        a = np.clip(a.astype(int) + rng.integers(-8, 8, a.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(a).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def concept_images(tmp_path):
    """Five small images of a striped square, written as PNGs."""
    return write_square_images(tmp_path / "images")


def tiny_text_encoder(tokenizer, width: int = 32):
    """A tiny random CLIP text encoder (2 layers, seeded) over the real vocabulary, in eval mode."""
    from infusion.core.model_configs import clip_text_encoder

    torch.manual_seed(0)
    return clip_text_encoder(width, layers=2, heads=2, ff_mult=2, tokenizer=tokenizer).eval()


def random_concept(pipe, name="mycat", class_phrase="cat", scale=1.0, seed=0):
    """A Concept with random Deltas that fits ``pipe.unet``."""
    from infusion.methods.infusion.concept import Concept
    from infusion.methods.infusion.processor import layer_widths
    from infusion.core.placeholders import phrase_token_count

    g = torch.Generator().manual_seed(seed)
    n = phrase_token_count(class_phrase, pipe.tokenizer)
    deltas = {k: scale * torch.randn(n, d, generator=g) for k, d in layer_widths(pipe.unet).items()}
    return Concept(name, class_phrase, deltas, base_model="tiny")


@pytest.fixture
def optimizer_steps(monkeypatch):
    """A list that grows by one on every ``torch.optim.AdamW.step`` (every trainer here uses AdamW): a resumed
    run that ignored its state and started over would take all its steps again, not only the remaining ones."""
    calls = []
    real = torch.optim.AdamW.step

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    return calls


@pytest.fixture
def checkpoint_calls(monkeypatch):
    """A list that grows on every ``torch.utils.checkpoint.checkpoint`` call (what diffusers' gradient
    checkpointing runs each checkpointed block through): the flag alone proves nothing."""
    import torch.utils.checkpoint as ckpt

    calls = []
    real = ckpt.checkpoint

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    return calls
