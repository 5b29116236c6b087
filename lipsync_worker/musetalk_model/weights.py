"""Where MuseTalk's weights live under MODELS_DIR, what is missing, and how to fetch them.

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


class MissingWeights(Exception):
    """The weights are not (all) there; the message names the files and the command that fetches them."""


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


def check(root: Path) -> None:
    absent = missing(root)
    if absent:
        raise MissingWeights(f"MuseTalk weights missing in MODELS_DIR={root.resolve()}: {', '.join(absent)}; "
                             f"fetch them with '{DOWNLOAD_COMMAND}' (needs the internet), or set MODELS_DIR "
                             "to a folder that has them")


def download(root: Path) -> list[Path]:
    """Fetch what is missing from the Hugging Face hub (HF_ENDPOINT and HF_TOKEN are honoured);
    files already present are kept. Raises whatever the hub client raises when it cannot."""
    from huggingface_hub import hf_hub_download

    fetched = []
    for folder, (repo, needs) in FILES.items():
        for choices in needs:
            if any((root / folder / name).is_file() for name in choices):
                continue
            if folder == UNET:  # the repository keeps the folder: fetch into MODELS_DIR itself
                path = hf_hub_download(repo, f"{folder}/{choices[0]}", local_dir=root)
            else:
                path = hf_hub_download(repo, choices[0], local_dir=root / folder)
            fetched.append(Path(path))
    return fetched
