"""Speech to speak to the avatar with: espeak's voice, as the 16 kHz mono s16le PCM a viewer's
microphone sends (harness.viewer.Microphone) and the recognition servers take."""
from __future__ import annotations

import asyncio

from tts_services.client import LocalTTS


async def espeak_pcm(text: str, voice: str | None = None) -> bytes:
    pcm = bytearray()
    async for chunk in LocalTTS().stream(text, voice=voice):
        pcm += chunk.pcm
    return bytes(pcm)


def espeak_pcm_now(text: str, voice: str | None = None) -> bytes:
    """espeak_pcm, outside an event loop."""
    return asyncio.run(espeak_pcm(text, voice))
