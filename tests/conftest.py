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
    from infusion.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="session")
def tokenizer():
    from infusion.tiny import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def concept_images(tmp_path):
    """Five small images of a striped square, written as PNGs."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        a = np.full((48, 48, 3), 220, np.uint8)
        a[12:36, 12:36] = (200, 40, 40)
        a[12:36:4, 12:36] = (30, 30, 200)
        a = np.clip(a.astype(int) + rng.integers(-8, 8, a.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(a).save(folder / f"{i}.png")
    return folder


def random_concept(pipe, name="mycat", class_phrase="cat", scale=1.0, seed=0):
    """A Concept with random Deltas that fits ``pipe.unet``."""
    from infusion.concept import Concept
    from infusion.processor import layer_widths
    from infusion.prompts import phrase_token_count

    g = torch.Generator().manual_seed(seed)
    n = phrase_token_count(class_phrase, pipe.tokenizer)
    deltas = {k: scale * torch.randn(n, d, generator=g) for k, d in layer_widths(pipe.unet).items()}
    return Concept(name, class_phrase, deltas, base_model="tiny")
