"""Random-initialised models of MuseTalk's architecture, saved in MODELS_DIR's layout, so tests
and CPU benchmarks run the musetalk engine through its real loaders without the real weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from contracts.musetalk_weights import UNET, VAE, WHISPER
from lipsync_worker.musetalk_model import face_parsing

# musetalkV15/musetalk.json as MuseTalk publishes it (the UNet of Stable Diffusion 1.x with 8 input
# channels, masked + reference latents, and whisper-tiny's 384-wide features to attend to).
FULL_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# sd-vae-ft-mse's config.json.
FULL_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 256, "scaling_factor": 0.18215,
}
# whisper-tiny (encoder and decoder: the checkpoint holds both; only the encoder is used).
FULL_WHISPER = {
    "d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
    "decoder_layers": 4, "decoder_attention_heads": 6, "decoder_ffn_dim": 1536, "num_mel_bins": 80,
    "max_source_positions": 1500, "max_target_positions": 448, "vocab_size": 51865,
}
FULL_CHUNK_SECONDS = 30

# The same architectures, small enough for a CPU: every shape that meets another model's stays
# (8 latent channels in, 4 out, 8x VAE downscale, whisper's layer count), widths shrink, attention
# only at the UNet's lower resolution, and
# whisper's window is 4 s instead of 30 (the streaming code reads it from the config). Whisper is
# initialised wider than its default: at 0.02 a random encoder hears almost nothing of the audio
# under its position embeddings, and tests must see the sound reach the mouth.
TINY_UNET = {**FULL_UNET, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 64,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "sample_size": 32}
TINY_VAE = {**FULL_VAE, "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}
TINY_WHISPER = {**FULL_WHISPER, "d_model": 64, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
                "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 128,
                "max_source_positions": 200, "max_target_positions": 16, "init_std": 0.5}
TINY_CHUNK_SECONDS = 4


def save_random(root: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Random-initialised models of MuseTalk's architecture, saved in MODELS_DIR's layout.
    "tiny" for tests and CPU benchmarks; "full" has the real sizes (the real compute)."""
    unet_config, vae_config, whisper_config, seconds = {
        "tiny": (TINY_UNET, TINY_VAE, TINY_WHISPER, TINY_CHUNK_SECONDS),
        "full": (FULL_UNET, FULL_VAE, FULL_WHISPER, FULL_CHUNK_SECONDS),
    }[size]
    torch.manual_seed(seed)
    (root / UNET).mkdir(parents=True, exist_ok=True)
    (root / UNET / "musetalk.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **unet_config}))
    torch.save(UNet2DConditionModel.from_config(unet_config).state_dict(), root / UNET / "unet.pth")
    AutoencoderKL.from_config(vae_config).save_pretrained(root / VAE)
    WhisperModel(WhisperConfig(**whisper_config)).save_pretrained(root / WHISPER)
    WhisperFeatureExtractor(chunk_length=seconds).save_pretrained(root / WHISPER)
    return root


def save_random_face_parsing(root: Path, seed: int = 0) -> Path:
    """A random-initialised BiSeNet where MODELS_DIR `root` has the face-parsing checkpoint. Full
    size: the architecture fixes every shape (~53 MB, built and saved in well under a second)."""
    torch.manual_seed(seed)
    path = face_parsing.weights_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(face_parsing.BiSeNet().state_dict(), path)
    return path
