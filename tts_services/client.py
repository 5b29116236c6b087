"""Client side of the TTS protocol, for lip-sync workers.

    tts = FallbackTTS(TTSClient("http://127.0.0.1:5002"), LocalTTS())
    async for chunk in tts.stream("Hello", voice="FemaleA"):
        ...  # chunk.pcm: 16 kHz mono s16le; chunk.phonemes: IPA timings when the engine has them

TTSClient streams from a server over HTTP (/tts/events), retrying only while it cannot connect;
it sends the API token (contracts/auth.py) when it is given one.
LocalTTS speaks with the offline espeak engine inside this process: it has no server to be down.
FallbackTTS uses the first and, if it fails before any audio, the second, logging why.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

import aiohttp

from contracts import auth

from . import protocol
from .engines.base import AudioChunk, BadRequest, TTSEngine, UpstreamUnavailable
from .speech import parse_request, speak

log = logging.getLogger("tts_services.client")


class TTSError(Exception):
    """Speech could not be produced."""


class TTSUnavailable(TTSError):
    """The server is down, unreachable, overloaded, or its voice failed."""


class TTSRejected(TTSError):
    """The request itself is wrong (HTTP 4xx): unknown voice, empty text, ..."""


class TTSClient:
    def __init__(self, base_url: str, *, token: str | None = None, connect_timeout: float = 2.0,
                 read_timeout: float = 15.0, retries: int = 2, retry_delay: float = 0.2) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = auth.headers(token)
        self.name = self.base_url
        self.retries = retries
        self.retry_delay = retry_delay
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "TTSClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One audio event can hold a whole sentence (~100 kB of base64): lift the line limit.
            self._session = aiohttp.ClientSession(timeout=self._timeout, read_bufsize=1 << 22,
                                                  headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, **kwargs) -> aiohttp.ClientResponse:
        """Send a request, retrying with backoff while the server cannot be connected to."""
        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            try:
                response = await self._http().request(method, url, **kwargs)
                break
            except aiohttp.ClientConnectorError as exc:
                if attempt == self.retries:
                    raise TTSUnavailable(f"TTS server {self.base_url} is down or unreachable: {exc}") from exc
                await asyncio.sleep(self.retry_delay * 2 ** attempt)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise TTSUnavailable(f"TTS server {self.base_url} failed: {exc or type(exc).__name__}") from exc
        if response.status >= 400:
            try:
                message = (await response.json()).get("message", "")
            except (aiohttp.ContentTypeError, json.JSONDecodeError, aiohttp.ClientError):
                message = await response.text(errors="replace")
            response.release()
            error = TTSRejected if response.status < 500 else TTSUnavailable
            raise error(f"TTS server {self.base_url} answered {response.status}: {message}")
        return response

    async def stream(self, text: str, voice: str | None = None, lang: str | None = None) -> AsyncIterator[AudioChunk]:
        body = {"text": text, **({"voice": voice} if voice else {}), **({"lang": lang} if lang else {})}
        response = await self._request("POST", "/tts/events", json=body)
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "audio":
                    yield protocol.parse_audio_event(event)
                elif event["type"] == "error":
                    raise TTSUnavailable(f"TTS server {self.base_url} failed mid-speech: {event['message']}")
                elif event["type"] == "end":
                    return
            raise TTSUnavailable(f"TTS server {self.base_url} ended the stream without finishing")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TTSUnavailable(f"TTS stream from {self.base_url} broke: {exc or type(exc).__name__}") from exc
        finally:
            response.release()

    async def voices(self) -> dict:
        return await self._json("/voices")

    async def health(self) -> dict:
        return await self._json("/health")

    async def _json(self, path: str) -> dict:
        response = await self._request("GET", path)
        try:
            return await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            raise TTSUnavailable(f"TTS server {self.base_url} sent a bad answer to {path}: {exc}") from exc
        finally:
            response.release()


class LocalTTS:
    """The offline voice in this process, behind the same stream() as TTSClient."""

    def __init__(self, engine: TTSEngine | None = None, max_chars: int = 2000, timeout: float = 10.0) -> None:
        if engine is None:
            from .engines.espeak import EspeakEngine
            engine = EspeakEngine()
        self.engine = engine
        self.name = f"local {engine.name}"
        self.max_chars = max_chars
        self.timeout = timeout

    async def stream(self, text: str, voice: str | None = None, lang: str | None = None) -> AsyncIterator[AudioChunk]:
        try:
            request = parse_request(self.engine, {"text": text, "voice": voice, "lang": lang}, self.max_chars)
            async for chunk in speak(self.engine, request, self.timeout):
                yield chunk
        except BadRequest as exc:
            raise TTSRejected(str(exc)) from exc
        except UpstreamUnavailable as exc:
            raise TTSUnavailable(str(exc)) from exc


class FallbackTTS:
    """Speak with `primary`; if it fails before the first audio, speak with the offline voice."""

    def __init__(self, primary: TTSClient, fallback: LocalTTS) -> None:
        self.primary = primary
        self.fallback = fallback

    async def stream(self, text: str, voice: str | None = None, lang: str | None = None) -> AsyncIterator[AudioChunk]:
        chunks = self.primary.stream(text, voice, lang)
        try:
            first = await anext(chunks, None)
        except TTSError as exc:
            log.warning("TTS %s failed (%s); speaking with the offline voice %s instead",
                        self.primary.name, exc, self.fallback.name)
            engine = self.fallback.engine
            # Keep the voice where the offline engine has one of that name (the timbre names).
            fallback_voice = voice if voice and engine.find_voice(voice) else None
            fallback_lang = lang if lang in engine.languages else None
            async for chunk in self.fallback.stream(text, fallback_voice, fallback_lang):
                yield chunk
            return
        try:
            if first is not None:
                yield first
                async for chunk in chunks:
                    yield chunk
        finally:
            await chunks.aclose()
