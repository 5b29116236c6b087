"""What every TTS engine is: voices it offers, and text in, 16 kHz PCM chunks out."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import AsyncIterator


class BadRequest(ValueError):
    """The caller asked for something this engine does not offer (HTTP 400)."""


class UpstreamUnavailable(RuntimeError):
    """The voice cannot be produced right now: network, upstream server, library (HTTP 503)."""


@dataclass(frozen=True)
class Voice:
    name: str
    lang: str
    gender: str = ""
    description: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Phoneme:
    """One phoneme (IPA) with its time in seconds from the start of its audio chunk."""
    start: float
    end: float
    symbol: str


@dataclass
class AudioChunk:
    """16 kHz mono signed 16-bit little-endian PCM, with the phonemes spoken in it if known."""
    pcm: bytes
    phonemes: list[Phoneme] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / 16000


class TTSEngine(ABC):
    """Base of every engine. Subclasses set name, languages and VOICES and implement synthesize."""

    name: str = ""
    languages: frozenset[str] = frozenset()
    VOICES: list[Voice] = []
    # Voice names accepted beyond those listed (edge-tts's full names), or None: only the listed.
    VOICE_PATTERN: re.Pattern | None = None

    def voices(self) -> list[Voice]:
        """Every voice this engine lists; the first is the default."""
        return list(self.VOICES)

    def find_voice(self, name: str) -> Voice | None:
        return next((v for v in self.voices() if v.name == name), None)

    @abstractmethod
    def synthesize(self, text: str, voice: Voice, lang: str) -> AsyncIterator[AudioChunk]:
        """Speak already-normalised text in `lang`; yield audio as soon as each piece is ready."""

    async def close(self) -> None:
        """Release network sessions or library handles."""
