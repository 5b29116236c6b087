"""Shared path of the engines that call an operator-run TTS server over HTTP."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp

from ..settings import Settings
from .base import AudioChunk, TTSEngine, UpstreamUnavailable


class HttpBridge(TTSEngine):
    upstream = ""  # the upstream project's name, for error messages

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.settings.connect_timeout, sock_read=self.settings.read_timeout
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def stream_audio(self, method: str, url: str, converter, **request) -> AsyncIterator[AudioChunk]:
        """Send one request and yield its body as our PCM, converted as it arrives."""
        try:
            async with self.session().request(method, url, **request) as response:
                if response.status != 200:
                    detail = (await response.text(errors="replace"))[:300]
                    raise UpstreamUnavailable(f"{self.upstream} at {url} answered {response.status}: {detail}")
                async for data in response.content.iter_any():
                    pcm = converter.feed(data)
                    if pcm:
                        yield AudioChunk(pcm)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise UpstreamUnavailable(f"cannot reach {self.upstream} at {url}: {exc or type(exc).__name__}") from exc
        tail = converter.flush()
        if tail:
            yield AudioChunk(tail)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
