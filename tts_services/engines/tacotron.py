"""Bridge to an operator-run Tacotron2 server speaking Coqui TTS's server API.

Expected API (what `tts-server --model_name tts_models/en/ljspeech/tacotron2-DDC` serves):
GET {TACOTRON_URL}/api/tts?text=...[&speaker_id=...] -> audio/wav, 16-bit PCM, any rate.
The server answers whole files, so we ask sentence by sentence: the first audio comes after
the first sentence, not after the whole text.
"""
from __future__ import annotations

from typing import AsyncIterator

from contracts.settings import ConfigError

from ..audio import WavStream
from ..settings import Settings
from ..text import split_sentences
from .base import AudioChunk, Voice
from .bridge import HttpBridge


class TacotronEngine(HttpBridge):
    name = "tacotron"
    upstream = "Tacotron2 (Coqui TTS server API)"
    languages = frozenset({"en"})
    VOICES = [Voice("default", "en", "female", "the Tacotron2 server's voice")]

    def __init__(self, settings: Settings) -> None:
        if not settings.tacotron_url:
            raise ConfigError("tacotron needs TACOTRON_URL: the base URL of a Coqui-TTS-compatible "
                              "server answering GET /api/tts?text=... with a WAV file")
        super().__init__(settings)

    async def synthesize(self, text: str, voice: Voice, lang: str) -> AsyncIterator[AudioChunk]:
        s = self.settings
        for sentence in split_sentences(text):
            params = {"text": sentence}
            if s.tacotron_speaker:
                params["speaker_id"] = s.tacotron_speaker
            async for chunk in self.stream_audio("GET", f"{s.tacotron_url}/api/tts", WavStream(), params=params):
                yield chunk
