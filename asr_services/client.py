"""Client side of the ASR servers, for lip-sync workers.

    asr = ASRClient("http://127.0.0.1:5010", api_token=token)
    text = await asr.transcribe(pcm, "en")                     # a whole utterance, over HTTP
    async with asr.utterance("en", on_partial=print) as u:     # streamed as it is spoken
        await u.send(pcm)                                      # as often as audio comes
        text = await u.finish()

pcm is 16 kHz mono s16le. Each call opens its own connection (nothing to close); every wait is
bounded by `timeout`. Whatever goes wrong is an ASRError, with the server's message when it sent one.
"""
from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable, TypeVar

import aiohttp

from contracts import auth
from contracts.asr_models import check_language

from . import protocol
from .protocol import MAX_MESSAGE_BYTES

PCM_HEADERS = {"Content-Type": "application/octet-stream"}
T = TypeVar("T")


class ASRError(RuntimeError):
    """The server is unreachable, refused, timed out, or said an error."""


def _checked(language: str) -> str:
    try:
        return check_language(language)
    except ValueError as exc:
        raise ASRError(str(exc)) from None


def _whole_samples(pcm: bytes) -> None:
    if len(pcm) % 2:
        raise ASRError(f"pcm must hold whole 16-bit samples (an even number of bytes); got {len(pcm)} bytes")


class ASRClient:
    def __init__(self, url: str, api_token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = auth.headers(api_token)

    async def transcribe(self, pcm: bytes, language: str) -> str:
        """The text of a whole utterance (POST /transcribe)."""
        params = {"language": _checked(language)}
        _whole_samples(pcm)
        try:
            async with aiohttp.ClientSession(headers=self._headers,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
                async with http.post(f"{self.url}/transcribe", params=params, data=pcm,
                                     headers=PCM_HEADERS) as response:
                    body = await response.text(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ASRError(f"ASR server {self.url} is unreachable or too slow: {exc or type(exc).__name__}") from exc
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if response.status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            said = answer.get("message") if isinstance(answer, dict) else None
            raise ASRError(f"ASR server {self.url} answered {response.status}: {said or body[:300]}")
        return answer["text"]

    def utterance(self, language: str, on_partial: Callable[[str], None]) -> "Utterance":
        """An utterance streamed over GET /asr, as `async with`; partial texts go to on_partial."""
        return Utterance(self, language, on_partial)


class Utterance:
    """One utterance over a WebSocket of its own: opened by `async with`, closed at its end."""

    def __init__(self, client: ASRClient, language: str, on_partial: Callable[[str], None]) -> None:
        self._client = client
        self._language = language
        self._on_partial = on_partial
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> "Utterance":
        client = self._client
        params = {"language": _checked(self._language)}
        self._http = aiohttp.ClientSession(headers=client._headers, timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=client.timeout))
        try:
            self._ws = await asyncio.wait_for(self._http.ws_connect(
                f"{client.url}/asr", params=params, timeout=aiohttp.ClientWSTimeout(ws_close=client.timeout)),
                client.timeout)
        except aiohttp.WSServerHandshakeError as exc:
            await self._http.close()
            raise ASRError(f"ASR server {client.url} refused the socket: HTTP {exc.status}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await self._http.close()
            raise ASRError(f"ASR server {client.url} is unreachable or too slow: {exc or type(exc).__name__}") from exc
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._ws.close()
        await self._http.close()

    async def send(self, pcm: bytes) -> None:
        """More audio of the utterance, in messages the server takes."""
        _whole_samples(pcm)
        for start in range(0, len(pcm), MAX_MESSAGE_BYTES):
            await self._send(self._ws.send_bytes, pcm[start:start + MAX_MESSAGE_BYTES])

    async def finish(self) -> str:
        """End the utterance and wait for its text. An utterance the server ended itself at its
        length limit comes back whole: the texts of its parts, joined."""
        await self._send(self._ws.send_json, protocol.END)
        try:
            return await asyncio.wait_for(asyncio.shield(self._reader), self._client.timeout)
        except asyncio.TimeoutError:
            raise ASRError(f"ASR server {self._client.url} sent no final within {self._client.timeout:g} s") from None

    async def _send(self, send: Callable[[T], Awaitable[None]], message: T) -> None:
        if self._reader.done():   # the server said an error, or closed: that is the answer
            self._reader.result()
            raise ASRError(f"the utterance to {self._client.url} is over; open another")
        try:
            await asyncio.wait_for(send(message), self._client.timeout)
        except (ConnectionResetError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise await self._reason(exc) from exc

    async def _reason(self, failure: Exception) -> ASRError:
        """Why a send failed: the server's error if it is on its way (it closes after one), else the failure."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), self._client.timeout)
        except ASRError as said:
            return said
        except Exception:
            pass
        return ASRError(f"sending to ASR server {self._client.url} failed: {failure or type(failure).__name__}")

    async def _read(self) -> str:
        """Partials to on_partial until the final of the end; ASRError for anything else."""
        texts = []
        try:
            while True:
                message = await self._ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise ASRError(f"ASR server {self._client.url} closed the socket (code {self._ws.close_code}) "
                                   "before the final")
                event = json.loads(message.data)
                if event["type"] == "partial":
                    self._on_partial(event["text"])
                elif event["type"] == "final":
                    texts.append(event["text"])
                    if event.get("reason") != "limit":
                        return " ".join(text for text in texts if text)
                elif event["type"] == "error":
                    raise ASRError(f"ASR server {self._client.url}: {event['message']}")
        except ASRError:
            raise
        except Exception as exc:  # a bad message, a broken connection, or on_partial failing: all end the utterance
            raise ASRError(f"reading from ASR server {self._client.url} failed: {type(exc).__name__}: {exc}") from exc
