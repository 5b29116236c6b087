"""Where MuseTalk's weights live under MODELS_DIR, what is missing, and the command that fetches
them: the worker loads them, the manager checks for them before it registers or starts an avatar
on the musetalk engine.

MODELS_DIR (default ./models) has MuseTalk's own layout, so a folder made by MuseTalk's or
LiveTalking's download script works as it is:
  musetalkV15/unet.pth, musetalkV15/musetalk.json   the UNet (TMElyralab/MuseTalk)
  sd-vae/                                            sd-vae-ft-mse (stabilityai/sd-vae-ft-mse)
  whisper/                                           whisper-tiny (openai/whisper-tiny)
"""
from __future__ import annotations

import os
from pathlib import Path

DOWNLOAD_COMMAND = "python -m lipsync_worker download-models"

# (folder under MODELS_DIR, Hugging Face repository, files any one of which will do, per need)
UNET = "musetalkV15"
VAE = "sd-vae"
WHISPER = "whisper"
FILES: dict[str, tuple[str, list[tuple[str, ...]]]] = {
    UNET: ("TMElyralab/MuseTalk", [("unet.pth",), ("musetalk.json",)]),
    VAE: ("stabilityai/sd-vae-ft-mse",
          [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]),
    WHISPER: ("openai/whisper-tiny",
              [("config.json",), ("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin")]),
}


def models_dir(env=os.environ) -> Path:
    return Path(env.get("MODELS_DIR") or "models")


def missing(root: Path) -> list[str]:
    """The files under `root` MuseTalk needs and does not find ('a or b' where either will do)."""
    absent = []
    for folder, (_, needs) in FILES.items():
        for choices in needs:
            if not any((root / folder / name).is_file() for name in choices):
                absent.append(" or ".join(f"{folder}/{name}" for name in choices))
    return absent
