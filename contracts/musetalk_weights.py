"""Where MuseTalk's weights live under MODELS_DIR, what is missing, and the command that fetches
them: the worker loads them, the manager checks for them before it registers or starts an avatar
on the musetalk engine.

MODELS_DIR (default ./models) has MuseTalk's own layout, so a folder made by MuseTalk's or
LiveTalking's download script works as it is:
  musetalkV15/unet.pth, musetalkV15/musetalk.json   the UNet (TMElyralab/MuseTalk)
  sd-vae/                                            sd-vae-ft-mse (stabilityai/sd-vae-ft-mse)
  whisper/                                           whisper-tiny (openai/whisper-tiny)
  face-parse-bisent/79999_iter.pth                   BiSeNet face parsing (optional: without it the
                                                     blend masks are ellipses and the face boxes Haar's)
MuseTalk's own script fetches the face-parsing checkpoint from Google Drive; the Hugging Face
repository ManyOtherFunctions/face-parse-bisent (which MuseTalk's Windows script uses) holds the
same file. Its resnet18-5c106cde.pth is not fetched: the checkpoint holds the backbone's weights.
"""
from __future__ import annotations

import os
from pathlib import Path

DOWNLOAD_COMMAND = "python -m lipsync_worker download-models"

# folder under MODELS_DIR -> (Hugging Face repository, per need: the files any one of which will do)
Files = dict[str, tuple[str, list[tuple[str, ...]]]]
UNET = "musetalkV15"
VAE = "sd-vae"
WHISPER = "whisper"
FACE_PARSING = "face-parse-bisent"
FILES: Files = {
    UNET: ("TMElyralab/MuseTalk", [("unet.pth",), ("musetalk.json",)]),
    VAE: ("stabilityai/sd-vae-ft-mse",
          [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]),
    WHISPER: ("openai/whisper-tiny",
              [("config.json",), ("preprocessor_config.json",), ("model.safetensors", "pytorch_model.bin")]),
}
# MuseTalk runs without these.
OPTIONAL: Files = {
    FACE_PARSING: ("ManyOtherFunctions/face-parse-bisent", [("79999_iter.pth",)]),
}
FETCHED: Files = {**FILES, **OPTIONAL}   # what DOWNLOAD_COMMAND fetches


def models_dir(env=os.environ) -> Path:
    return Path(env.get("MODELS_DIR") or "models")


def missing(root: Path, files: Files = FILES) -> list[str]:
    """The files under `root` MuseTalk needs (of `files`) and does not find ('a or b' where
    either will do)."""
    absent = []
    for folder, (_, needs) in files.items():
        for choices in needs:
            if not any((root / folder / name).is_file() for name in choices):
                absent.append(" or ".join(f"{folder}/{name}" for name in choices))
    return absent
