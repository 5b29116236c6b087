"""The speech recognition models: their canonical names and aliases. The ASR server builds their
recognisers (asr_services.models); the host agent starts one server per model, and the worker
streams its viewers' speech to the server its avatar's config names (asr_model)."""
from __future__ import annotations

import re

MODELS = ("sphinx", "whisper", "openai")
DEFAULT_MODEL = "sphinx"       # offline, no downloads: pocketsphinx's wheel carries an English model
DEFAULT_LANGUAGE = "en"
SAMPLE_RATE = 16000            # what every server takes: mono signed 16-bit little-endian PCM

_ALIASES = {
    "sphinx": "sphinx", "pocketsphinx": "sphinx", "cmusphinx": "sphinx",
    "whisper": "whisper", "fasterwhisper": "whisper",
    "openai": "openai", "openaiwhisper": "openai",
}
# An ISO 639-1 code ("en", "fa") or a regional tag ("en-US"): what a config's language may be.
LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def canonical_model(name: str) -> str:
    """'faster-whisper' -> 'whisper', 'PocketSphinx' -> 'sphinx', ...; ValueError when unknown."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown ASR model {name!r}; known: {', '.join(MODELS)}") from None


def check_language(language: str) -> str:
    """The language code as given; ValueError when it is not one."""
    if not isinstance(language, str) or not LANGUAGE.fullmatch(language):
        raise ValueError(f"language {language!r} must be a language code such as 'en' or 'fa'")
    return language
