"""MuseTalk's three models, loaded from MODELS_DIR: the UNet, the VAE and whisper-tiny's encoder.

fp16 on a GPU, fp32 on the CPU. The same loader reads the real weights and the small random
models that tests and `bench/musetalk_bench.py --tiny` save in the same layout (`save_random`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from contracts.musetalk_weights import UNET, VAE, WHISPER

from .weights import check

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


class PositionalEncoding(torch.nn.Module):
    """Sinusoidal positions added to the audio tokens, as MuseTalk's UNet was trained with."""

    def __init__(self, width: int, length: int = 5000) -> None:
        super().__init__()
        position = torch.arange(length, dtype=torch.float32)[:, None]
        rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
        table = torch.zeros(length, width)
        table[:, 0::2] = torch.sin(position * rate)
        table[:, 1::2] = torch.cos(position * rate)
        self.register_buffer("table", table[None], persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.table[:, :tokens.shape[1]].to(tokens.dtype)


@dataclass
class Models:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    whisper: torch.nn.Module                  # the encoder of WhisperModel
    features: WhisperFeatureExtractor         # 16 kHz audio -> log-mel, padded to whisper's window
    positions: PositionalEncoding
    device: torch.device
    dtype: torch.dtype

    @property
    def scaling(self) -> float:
        return float(self.vae.config.scaling_factor)


def pick_device(name: str | None = None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def quiet() -> None:
    """Progress bars and advice about `accelerate` would fill the worker's log on every start."""
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _ready(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _refuse_missing(root: Path, absent: list[str]) -> None:
    """Both libraries only warn about weights a checkpoint lacks and then leave them random:
    here that is an error."""
    if absent:
        raise ValueError(f"the checkpoints in {root} lack {len(absent)} weights ({', '.join(sorted(absent)[:3])}, "
                         f"...): they are not sd-vae-ft-mse and whisper-tiny; fetch them again")


def load_vae(root: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderKL:
    """The VAE alone (what preparing an avatar needs), checked as `load` checks it."""
    quiet()
    vae, info = AutoencoderKL.from_pretrained(root / VAE, output_loading_info=True, low_cpu_mem_usage=False)
    _refuse_missing(root, info["missing_keys"])
    return _ready(vae, device, dtype)


def load(root: Path, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Models:
    """The models under MODELS_DIR `root`, in fp16 on a GPU and fp32 on the CPU unless `dtype`
    says otherwise. MissingWeights when files are absent; a ValueError when they do not fit
    together (a whisper whose width is not the UNet's cross-attention width)."""
    check(root)
    quiet()
    device = device or pick_device()
    dtype = dtype or default_dtype(device)
    unet_config = json.loads((root / UNET / "musetalk.json").read_text())
    # Built on the meta device and then given the checkpoint's tensors: no time spent on a
    # random initialisation of 850M parameters that would be overwritten at once.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    state = torch.load(root / UNET / "unet.pth", map_location="cpu", weights_only=True)
    unet.load_state_dict(state, assign=True)  # strict: a checkpoint of another shape fails here
    vae = load_vae(root, device, dtype)
    whisper, whisper_info = WhisperModel.from_pretrained(root / WHISPER, output_loading_info=True)
    whisper = whisper.get_encoder()
    # The decoder of whisper is never used, so its weights may be absent.
    _refuse_missing(root, [k for k in whisper_info["missing_keys"] if k.startswith("encoder.")])
    features = WhisperFeatureExtractor.from_pretrained(root / WHISPER)
    width = whisper.config.d_model
    if unet.config.cross_attention_dim != width:
        raise ValueError(f"whisper in {root / WHISPER} is {width} wide but the UNet attends to "
                         f"{unet.config.cross_attention_dim}: the weights do not belong together")
    if features.nb_max_frames != 2 * whisper.config.max_source_positions:
        raise ValueError(f"{root / WHISPER}: the feature extractor's window ({features.nb_max_frames} mel frames) "
                         f"is not the encoder's ({2 * whisper.config.max_source_positions})")
    return Models(_ready(unet, device, dtype), vae, _ready(whisper, device, dtype),
                  features, PositionalEncoding(width).to(device), device, dtype)


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
