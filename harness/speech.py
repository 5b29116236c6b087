"""Speech to speak to the avatar with: espeak's voice, as the 16 kHz mono s16le PCM a viewer's
microphone sends (harness.viewer.Microphone) and the recognition servers take, or as a WAV file
between silences that Chromium plays as a fake microphone (--use-file-for-fake-audio-capture,
looping it); the silences let the voice activity detector find where each utterance ends."""
from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path

from tts_services.audio import SAMPLE_RATE
from tts_services.client import LocalTTS

# Heard whole by pocketsphinx's English model, even through a browser's WebRTC (it mishears most
# espeak sentences; in this one it gets every word).
SENTENCE = "What is the weather like?"


async def espeak_pcm(text: str, voice: str | None = None) -> bytes:
    pcm = bytearray()
    async for chunk in LocalTTS().stream(text, voice=voice):
        pcm += chunk.pcm
    return bytes(pcm)


def espeak_pcm_now(text: str, voice: str | None = None) -> bytes:
    """espeak_pcm, outside an event loop."""
    return asyncio.run(espeak_pcm(text, voice))


def _silence(seconds: float) -> bytes:
    return b"\0\0" * round(SAMPLE_RATE * seconds)


def wav(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """Mono s16le PCM as the bytes of a WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def speech_wav(path: Path, text: str = SENTENCE, silence_before: float = 2.0, silence_after: float = 2.0,
               voice: str | None = None) -> Path:
    """Write `text` in espeak's voice, 16 kHz mono 16-bit, between silences of the given seconds."""
    path.write_bytes(wav(_silence(silence_before) + espeak_pcm_now(text, voice) + _silence(silence_after)))
    return path
