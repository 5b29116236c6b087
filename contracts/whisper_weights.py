"""Where the whisper recogniser's weights live, what is missing, and fetching them.

A faster-whisper model is a folder: $MODELS_DIR/whisper/<size> (WHISPER_MODEL=<size>, default
small), or any folder given by its absolute path (WHISPER_MODEL=/path). It must hold FILES:
faster-whisper would fetch a missing tokenizer.json from the Hugging Face hub, so nothing is
loaded before they are all there.
"""
from __future__ import annotations

from pathlib import Path

from .settings import ConfigError

DEFAULT_SIZE = "small"
# Systran's conversions on the Hugging Face hub, one repository a size.
SIZES = ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
         "large-v1", "large-v2", "large-v3")
REPOSITORY = "Systran/faster-whisper-{size}"
# What a model needs, and what download-models fetches (preprocessor_config.json: large-v3's mel
# settings; the others have none).
FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.*")
PATTERNS = [*FILES, "preprocessor_config.json"]
DOWNLOAD_COMMAND = "python -m asr_services download-models --whisper {size}"


def folder(models_dir: Path, model: str) -> Path:
    """The folder of WHISPER_MODEL `model`: a size under MODELS_DIR, or an absolute path."""
    path = Path(model)
    return path if path.is_absolute() else models_dir / "whisper" / model


def missing(path: Path) -> list[str]:
    """The FILES `path` lacks."""
    return [name for name in FILES if not any(path.glob(name))]


def check(path: Path) -> None:
    """ConfigError naming the folder, the files it lacks and how to get them, unless it has them."""
    absent = missing(path)
    if absent:
        size = path.name if path.name in SIZES else DEFAULT_SIZE
        raise ConfigError(
            f"the whisper model needs a faster-whisper model folder at {path.resolve()} holding "
            f"{', '.join(FILES)}; missing: {', '.join(absent)}. Fetch one with "
            f"'{DOWNLOAD_COMMAND.format(size=size)}' (needs the internet; it fills MODELS_DIR/whisper/{size}, "
            f"then set WHISPER_MODEL={size}), or set WHISPER_MODEL to the absolute path of a folder that "
            "has them, or serve --model sphinx, which needs no download.")


def download(size: str, target: Path) -> None:
    """Fetch a size's model from the Hugging Face hub (HF_ENDPOINT and HF_TOKEN are honoured) into
    `target`; raises whatever the hub client raises when it cannot."""
    from huggingface_hub import snapshot_download

    snapshot_download(REPOSITORY.format(size=size), local_dir=target, allow_patterns=PATTERNS)
