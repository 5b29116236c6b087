"""The voice models: their canonical names, aliases, and how to build each engine."""
from __future__ import annotations

import re

from .engines.base import TTSEngine
from .settings import Settings

MODELS = ("espeak", "edgetts", "sovits", "cosyvoice", "tacotron")
DEFAULT_MODEL = "espeak"

# Spellings the existing system and its avatar configs use, compared without case or punctuation.
_ALIASES = {
    "espeak": "espeak", "espeakng": "espeak",
    "edgetts": "edgetts", "edge": "edgetts",
    "sovits": "sovits", "gptsovits": "sovits",
    "cosyvoice": "cosyvoice", "cosyvoice2": "cosyvoice",
    "tacotron": "tacotron", "tacotron2": "tacotron",
}


def canonical_model(name: str) -> str:
    """'GPT-SoVITS' -> 'sovits', 'TacoTron2' -> 'tacotron', ...; ValueError when unknown."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown TTS model {name!r}; known: {', '.join(MODELS)}") from None


def create_engine(model: str, settings: Settings) -> TTSEngine:
    """Build the engine of a canonical model name; ConfigError when its settings are missing."""
    # Imported here so a server loads only its own engine's dependencies.
    if model == "espeak":
        from .engines.espeak import EspeakEngine
        return EspeakEngine()
    if model == "edgetts":
        from .engines.edgetts import EdgeTTSEngine
        return EdgeTTSEngine(settings)
    if model == "sovits":
        from .engines.sovits import SovitsEngine
        return SovitsEngine(settings)
    if model == "cosyvoice":
        from .engines.cosyvoice import CosyVoiceEngine
        return CosyVoiceEngine(settings)
    if model == "tacotron":
        from .engines.tacotron import TacotronEngine
        return TacotronEngine(settings)
    raise ValueError(f"unknown TTS model {model!r}; known: {', '.join(MODELS)}")
