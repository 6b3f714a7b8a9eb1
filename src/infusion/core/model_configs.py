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


def load_tokenizer(pad_token: str | None = None):
    """The packaged CLIP tokenizer; ``pad_token="!"`` gives SD 2.x's and SDXL's second tokenizer (same BPE)."""
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), **kwargs)


def clip_text_encoder(width: int, layers: int, heads: int, ff_mult: int = 4, tokenizer=None, vocab_size: int | None = None,
                      projection_dim: int | None = None, hidden_act: str = "quick_gelu"):
    """A randomly initialised CLIPTextModel of ``width`` over the CLIP vocabulary (the packaged tokenizer's ids);
    with ``projection_dim`` a CLIPTextModelWithProjection (SDXL's second encoder: pooled, projected output)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tokenizer or load_tokenizer()
    config = CLIPTextConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=width,
        intermediate_size=ff_mult * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act=hidden_act,
        **({"projection_dim": projection_dim} if projection_dim else {}),
    )
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


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
    tokenizer = load_tokenizer()
    torch.manual_seed(seed)
    unet = _tiny_unet(sample_size, cross_dim, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2)
    vae = _tiny_vae(sample_size)
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


def _tiny_unet(sample_size: int, cross_dim: int, **config):
    """A 2-block UNet (32/64 channels, one layer per block, 8 norm groups); ``config`` sets the rest."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), cross_attention_dim=cross_dim, norm_num_groups=8, **config)


def _tiny_vae(sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )


def tiny_sdxl_pipeline(seed: int = 0, sample_size: int = 8):
    """A StableDiffusionXLPipeline shaped like SDXL, small enough for CPU tests.

    Two CLIP text encoders of width 32 over the real tokenizer (the second with a projection, pooled
    dim 32, and SDXL's "!" padding); UNet: 2 blocks (32/64 channels), cross-attention of width 64
    (= 32 + 32, the concatenated encoders) with transformer depth 1 and 2, linear projections,
    ``addition_embed_type="text_time"`` (pooled text + 6 micro-conditioning ids); DDIM.
    """
    from diffusers import StableDiffusionXLPipeline

    tokenizer, tokenizer_2 = load_tokenizer(), load_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    unet = _tiny_unet(sample_size, 64, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                      attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                      addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    vae = _tiny_vae(sample_size)
    text_encoder = clip_text_encoder(32, layers=2, heads=2, ff_mult=2, tokenizer=tokenizer)
    text_encoder_2 = clip_text_encoder(32, layers=2, heads=2, ff_mult=2, tokenizer=tokenizer_2, projection_dim=32,
                                       hidden_act="gelu")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        unet=unet, scheduler=ddim_scheduler(), force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd2_pipeline(seed: int = 0, sample_size: int = 8):
    """A StableDiffusionPipeline shaped like SD 2.x: an OpenCLIP-style text encoder (GELU, "!" padding, width 64,
    standing for SD2's 1024), per-block head dims with linear projections in the transformers, and a
    v-prediction DDIM scheduler."""
    from diffusers import DDIMScheduler

    tokenizer = load_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    unet = _tiny_unet(sample_size, 64, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                      use_linear_projection=True)
    text_encoder = clip_text_encoder(64, layers=2, heads=4, ff_mult=2, tokenizer=tokenizer, hidden_act="gelu")
    scheduler = DDIMScheduler.from_config(ddim_scheduler().config, prediction_type="v_prediction")
    return assemble_pipeline(_tiny_vae(sample_size), text_encoder, unet, tokenizer, scheduler)


def sdxl_unet_config() -> dict:
    """The exact UNet config of SDXL 1.0 base (for benchmarks and sizes with random weights)."""
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
        norm_num_groups=32,
    )
