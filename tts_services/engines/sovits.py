"""Bridge to a GPT-SoVITS api_v2 server: POST /tts, streamed WAV (header first, then PCM)."""
from __future__ import annotations

from typing import AsyncIterator

from contracts.settings import ConfigError

from ..audio import WavStream
from ..settings import Settings
from .base import AudioChunk, Voice
from .bridge import HttpBridge


class SovitsEngine(HttpBridge):
    name = "sovits"
    upstream = "GPT-SoVITS"
    languages = frozenset({"zh", "en", "ja", "ko", "yue"})

    def __init__(self, settings: Settings) -> None:
        if not settings.sovits_ref_audio:
            raise ConfigError("sovits needs SOVITS_REF_AUDIO: the path of the reference audio on the GPT-SoVITS server")
        super().__init__(settings)
        self.VOICES = [Voice("default", settings.sovits_ref_lang, "", f"cloned from {settings.sovits_ref_audio}")]

    def synthesize(self, text: str, voice: Voice, lang: str) -> AsyncIterator[AudioChunk]:
        s = self.settings
        body = {
            "text": text,
            "text_lang": lang,
            "ref_audio_path": s.sovits_ref_audio,
            "prompt_text": s.sovits_ref_text,
            "prompt_lang": s.sovits_ref_lang,
            "media_type": "wav",      # the WAV header is the only place the model's rate is named
            "streaming_mode": True,   # one fragment at a time
        }
        return self.stream_audio("POST", f"{s.sovits_url}/tts", WavStream(), json=body)
