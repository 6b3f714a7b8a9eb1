"""The world model's architecture: a small Stable Diffusion (diffusers layout) built from configs.

32 px RGB images <-> (4, 8, 8) VAE latents; a CLIP text encoder of width ``TEXT_DIM`` over the
real CLIP vocabulary (49,408 rows: the embedding table is most of its size); a UNet with
cross-attention of the same width; DDIM scheduler with SD1.x's beta schedule.
"""

from __future__ import annotations

import torch

from ..tiny import load_tokenizer

IMAGE_SIZE = 32
LATENT_SIZE = 8
TEXT_DIM = 64


def build_vae():
    """AutoencoderKL: (B, 3, 32, 32) in [-1, 1] <-> (B, 4, 8, 8) latents (~1M parameters)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def build_text_encoder(tokenizer=None):
    """CLIPTextModel of width ``TEXT_DIM`` over the full CLIP vocabulary; last hidden state (B, 77, 64)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tokenizer or load_tokenizer()
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=4 * TEXT_DIM,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_unet():
    """UNet2DConditionModel on (B, 4, 8, 8) latents, cross-attention to (B, 77, TEXT_DIM) (~4.2M parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,  # diffusers' legacy name: the number of heads
        norm_num_groups=32,
    )


def build_scheduler():
    """DDIM with Stable Diffusion 1.x's scaled-linear betas."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def assemble_pipeline(vae, text_encoder, unet, tokenizer=None):
    """A StableDiffusionPipeline of the given parts (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer or load_tokenizer(),
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
