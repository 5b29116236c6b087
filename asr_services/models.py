"""How to build each recognition model's recogniser (the names and aliases: contracts.asr_models)."""
from __future__ import annotations

from contracts.asr_models import MODELS

from .engines.base import Recognizer
from .settings import Settings


def create_recognizer(model: str, settings: Settings) -> Recognizer:
    """Build the recogniser of a canonical model name; ConfigError when it cannot run (no weights,
    no upstream)."""
    # Imported here so a server loads only its own model's libraries (sphinx never loads CTranslate2).
    if model == "sphinx":
        from .engines.sphinx import SphinxRecognizer
        return SphinxRecognizer(settings)
    if model == "whisper":
        from .engines.whisper import WhisperRecognizer
        return WhisperRecognizer(settings)
    if model == "openai":
        from .engines.openai import OpenAIRecognizer
        return OpenAIRecognizer(settings)
    raise ValueError(f"unknown ASR model {model!r}; known: {', '.join(MODELS)}")
