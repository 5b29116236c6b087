"""Spoken test input: a WAV file of the project's offline voice (espeak) saying a sentence, between
silences. Chromium plays it as a fake microphone (--use-file-for-fake-audio-capture), looping it,
and the silences let a voice activity detector find where each utterance ends."""
from __future__ import annotations

import asyncio
import wave
from pathlib import Path

from tts_services.engines.espeak import EspeakEngine
from tts_services.audio import SAMPLE_RATE

# Heard whole by pocketsphinx's English model through WebRTC (its weak model mishears most
# espeak sentences; "What is the weather today?" comes through word for word).
SENTENCE = "What is the weather today?"


async def _speak(text: str, voice_name: str) -> bytes:
    engine = EspeakEngine()
    voice = next(v for v in engine.voices() if v.name == voice_name)
    return b"".join([chunk.pcm async for chunk in engine.synthesize(text, voice, voice.lang)])


def _silence(seconds: float) -> bytes:
    return b"\0\0" * round(SAMPLE_RATE * seconds)


def speech_wav(path: Path, text: str = SENTENCE, silence_before: float = 2.0, silence_after: float = 2.0,
               voice: str = "en-us") -> Path:
    """Write `text` spoken by espeak's `voice`, as 16 kHz mono 16-bit PCM, between silences of
    the given seconds; returns the path."""
    pcm = asyncio.run(_speak(text, voice))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(_silence(silence_before) + pcm + _silence(silence_after))
    return path
