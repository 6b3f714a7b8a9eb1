"""Tiny Stable Diffusion pipelines built from configs, with the real CLIP tokenizer.

For tests, benchmarks and the demo before a trained model exists: random weights, so their
images are noise, but every shape, layer name and code path is the real one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch


def tokenizer_dir() -> Path:
    """The packaged CLIP BPE tokenizer (SD1.x vocabulary, 49,408 tokens)."""
    return Path(str(resources.files("infusion") / "data" / "clip-tokenizer"))


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()))


def clip_text_encoder(width: int, layers: int, heads: int, ff_mult: int = 4, tokenizer=None, vocab_size: int | None = None):
    """A randomly initialised CLIPTextModel of ``width`` over the CLIP vocabulary (the packaged tokenizer's ids)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tokenizer or load_tokenizer()
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size or len(tokenizer),
            hidden_size=width,
            intermediate_size=ff_mult * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def ddim_scheduler():
    """DDIM with Stable Diffusion 1.x's scaled-linear betas."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )


def assemble_pipeline(vae, text_encoder, unet, tokenizer=None, scheduler=None):
    """A StableDiffusionPipeline of the given parts (DDIM by default; no safety checker, no progress bar)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer or load_tokenizer(),
        unet=unet,
        scheduler=scheduler or ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd_pipeline(seed: int = 0, sample_size: int = 8, cross_dim: int = 32, text_vocab: int | None = None):
    """A StableDiffusionPipeline small enough to run many times a second on a CPU.

    UNet: 2 blocks (32/64 channels), cross-attention in both, 2 heads; VAE: 2 blocks, 4 latent
    channels, 2x downsampling (images are ``2*sample_size`` px); CLIP text encoder: 2 layers of
    width ``cross_dim`` over the real tokenizer's vocabulary; DDIM scheduler.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = load_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )
    text_encoder = clip_text_encoder(cross_dim, layers=2, heads=2, ff_mult=2, tokenizer=tokenizer, vocab_size=text_vocab)
    return assemble_pipeline(vae, text_encoder, unet, tokenizer)


def sd15_unet_config() -> dict:
    """The exact UNet config of Stable Diffusion 1.5 (for benchmarks with random weights)."""
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
