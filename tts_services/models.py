"""How to build each voice model's engine (the names and aliases: contracts.tts_models)."""
from __future__ import annotations

from contracts.tts_models import MODELS

from .engines.base import TTSEngine
from .settings import Settings


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
