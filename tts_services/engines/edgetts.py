"""Microsoft Edge's neural voices through edge-tts (needs the internet)."""
from __future__ import annotations

import asyncio
import math
import re
from typing import AsyncIterator

import aiohttp
import edge_tts
from edge_tts.exceptions import EdgeTTSException

from ..audio import CompressedStream
from ..settings import Settings
from .base import AudioChunk, TTSEngine, UpstreamUnavailable, Voice

# The friendly timbre names the existing system's avatars are configured with.
TIMBRES = {
    "Default": "en-US-BrianNeural",
    "MaleA": "en-US-GuyNeural", "MaleB": "en-US-ChristopherNeural", "MaleC": "en-US-DavisNeural",
    "MaleD": "en-US-AndrewNeural", "MaleE": "en-US-JacobNeural", "MaleF": "en-US-SteffanNeural",
    "FemaleA": "en-US-EmmaNeural", "FemaleB": "en-US-JennyMultilingualNeural",
    "FemaleC": "en-US-JennyNeural", "FemaleD": "en-US-AriaNeural", "FemaleE": "en-US-AnaNeural",
    "FemaleF": "en-US-SaraNeural",
    "ChineseMaleA": "zh-CN-YunjianNeural", "ChineseMaleB": "zh-CN-YunxiNeural",
    "ChineseMaleC": "zh-CN-YunxiNeural",
    "ChineseFemaleA": "zh-CN-XiaoxiaoNeural", "ChineseFemaleB": "zh-CN-XiaoyiNeural",
}
# A full edge voice name passes through: language-REGION[-variant]-NameNeural.
FULL_NAME = re.compile(r"^([a-z]{2,3})-[A-Z]{2}(?:-[A-Za-z]+)?-[A-Za-z]+Neural$")


def _voice(name: str, target: str) -> Voice:
    gender = "female" if "Female" in name or "Dilara" in target else "male"
    return Voice(name, target.split("-")[0], gender, target)


class EdgeTTSEngine(TTSEngine):
    name = "edgetts"
    languages = frozenset({"en", "fa", "zh"})
    VOICES = [_voice(name, target) for name, target in TIMBRES.items()] + [
        _voice("fa-IR-FaridNeural", "fa-IR-FaridNeural"),
        _voice("fa-IR-DilaraNeural", "fa-IR-DilaraNeural"),
    ]

    VOICE_PATTERN = FULL_NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def find_voice(self, name: str) -> Voice | None:
        known = super().find_voice(name)
        if known is None and FULL_NAME.match(name):
            return _voice(name, name)
        return known

    async def synthesize(self, text: str, voice: Voice, lang: str) -> AsyncIterator[AudioChunk]:
        communicate = edge_tts.Communicate(
            text, TIMBRES.get(voice.name, voice.name),
            # edge-tts insists on whole seconds.
            connect_timeout=max(1, math.ceil(self.settings.connect_timeout)),
            receive_timeout=max(1, math.ceil(self.settings.read_timeout)),
            proxy=self.settings.edgetts_proxy,
        )
        decoder = CompressedStream("mp3")
        try:
            async for message in communicate.stream():
                if message["type"] == "audio":
                    pcm = decoder.feed(message["data"])
                    if pcm:
                        yield AudioChunk(pcm)
        except (aiohttp.ClientError, asyncio.TimeoutError, EdgeTTSException) as exc:
            raise UpstreamUnavailable(
                f"edge-tts cannot reach Microsoft's speech service (it needs the internet): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        tail = decoder.flush()
        if tail:
            yield AudioChunk(tail)
