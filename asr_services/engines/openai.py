"""Any OpenAI-compatible transcription server: POST {ASR_URL}/audio/transcriptions with the
utterance as a WAV file (OpenAI's API, and self-hosted ones that copy it: faster-whisper-server,
LocalAI, vLLM). It answers whole utterances only: no partials."""
from __future__ import annotations

import asyncio
import io
import json
import wave

import aiohttp

from contracts import auth
from contracts.asr_models import SAMPLE_RATE
from contracts.settings import ConfigError

from ..settings import Settings
from .base import Recognizer, Unavailable


def wav(pcm: bytes) -> bytes:
    """16 kHz mono s16le PCM as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes(pcm)
    return out.getvalue()


class OpenAIRecognizer(Recognizer):
    name = "openai"

    def __init__(self, settings: Settings) -> None:
        if settings.openai_url is None:
            raise ConfigError(
                "the openai model needs ASR_URL, the base of an OpenAI-compatible API (it posts to "
                "ASR_URL/audio/transcriptions), e.g. ASR_URL=https://api.openai.com/v1 with ASR_API_KEY=sk-..., "
                "or ASR_URL=http://127.0.0.1:8000/v1 for a self-hosted server; ASR_OPENAI_MODEL names its model "
                "(default whisper-1). Set them and start it again: "
                "ASR_URL=... python -m asr_services --model openai; or serve --model sphinx, which needs no server.")
        self.url = f"{settings.openai_url}/audio/transcriptions"
        self.model = settings.openai_model
        self._headers = auth.headers(settings.openai_key)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                              sock_read=settings.read_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:   # made in the server's event loop, on first use
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def transcribe(self, pcm: bytes, language: str) -> str:
        form = aiohttp.FormData()
        form.add_field("file", wav(pcm), filename="utterance.wav", content_type="audio/wav")
        form.add_field("model", self.model)
        form.add_field("language", language)
        form.add_field("response_format", "json")
        try:
            async with self._http().post(self.url, data=form) as response:
                body = await response.text(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"the transcription server {self.url} is unreachable or silent: "
                              f"{exc or type(exc).__name__}") from None
        if response.status >= 400:
            raise Unavailable(f"the transcription server {self.url} answered {response.status}: {body[:500]}")
        try:
            text = json.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            raise Unavailable(f"the transcription server {self.url} answered without a text: {body[:500]}")
        return text.strip()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
