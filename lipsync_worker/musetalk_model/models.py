"""MuseTalk's three models, loaded from MODELS_DIR: the UNet, the VAE and whisper-tiny's encoder.

fp16 on a GPU, fp32 on the CPU. The same loader reads the real weights and the small random
models that tests and `bench/musetalk_bench.py --tiny` save in the same layout
(harness.musetalk.save_random).
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
from transformers import WhisperFeatureExtractor, WhisperModel

from contracts.musetalk_weights import UNET, VAE, WHISPER

from .weights import check


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
