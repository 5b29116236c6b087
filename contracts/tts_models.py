"""The voice models: their canonical names and the aliases the existing system uses. The TTS
server builds their engines (tts_services.models); the manager starts one server per model."""
from __future__ import annotations

import re

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
