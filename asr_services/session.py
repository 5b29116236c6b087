"""One WebSocket of GET /asr: utterances in as audio, partials and finals out (the messages:
asr_services.protocol)."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, TypeVar

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from . import protocol
from .engines.base import BadRequest, Recognizer, Stream, Unavailable
from .metrics import Metrics
from .protocol import BYTES_PER_SECOND, MAX_MESSAGE_BYTES

log = logging.getLogger("asr_services")

ROUTE = "asr"
T = TypeVar("T")


class Refused(Exception):
    """The socket ends: the message is sent as an error, then it closes with `code`."""

    def __init__(self, message: str, code: int, outcome: str) -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome


class Session:
    def __init__(self, ws: web.WebSocketResponse, recognizer: Recognizer, metrics: Metrics,
                 max_utterance_seconds: float, idle_timeout: float) -> None:
        self.ws = ws
        self.recognizer = recognizer
        self.metrics = metrics
        self.max_bytes = int(max_utterance_seconds * BYTES_PER_SECOND) // 2 * 2
        self.idle_timeout = idle_timeout
        self._stream: Stream | None = None
        self._fed = 0        # bytes of the utterance under way
        self._said = ""      # its partial last sent

    async def run(self, language: str) -> None:
        """Serve utterances in `language` (a checked code) until the client closes or is refused."""
        try:
            try:
                await self._serve(language)
            except Refused as exc:
                self.metrics.outcome(ROUTE, exc.outcome)
                await self._send(protocol.error(str(exc)))
                await self.ws.close(code=exc.code)
        except ConnectionResetError:   # the client left, or stopped reading, while we answered
            self.metrics.outcome(ROUTE, "client_gone")
        finally:
            if self._stream is not None:
                await self._stream.abandon()

    async def _serve(self, language: str) -> None:
        try:
            code = self.recognizer.language(language)
        except BadRequest as exc:
            raise Refused(str(exc), WSCloseCode.POLICY_VIOLATION, "bad_request") from None
        while (message := await self._receive()) is not None:
            if message.type == WSMsgType.BINARY:
                await self._audio(message.data, code)
            else:
                await self._command(message.data)

    async def _receive(self) -> WSMessage | None:
        """The next binary or text message; None once the client closes."""
        try:
            message = await self.ws.receive(timeout=self.idle_timeout)
        except TimeoutError:
            raise Refused(f"nothing received for {self.idle_timeout:g} s (ASR_IDLE_TIMEOUT); closing",
                          WSCloseCode.POLICY_VIOLATION, "idle") from None
        return message if message.type in (WSMsgType.BINARY, WSMsgType.TEXT) else None

    async def _audio(self, pcm: bytes, language: str) -> None:
        if len(pcm) > MAX_MESSAGE_BYTES:
            raise Refused(f"a binary message holds {len(pcm)} bytes; the limit is {MAX_MESSAGE_BYTES}: "
                          "send the audio in smaller pieces", WSCloseCode.MESSAGE_TOO_BIG, "too_large")
        if len(pcm) % 2:
            raise Refused("binary messages must hold whole 16-bit samples (an even number of bytes)",
                          WSCloseCode.POLICY_VIOLATION, "bad_request")
        while pcm:
            if self._stream is None:
                self._stream = await self._unless_unavailable(self.recognizer.stream(language))
            piece, pcm = pcm[:self.max_bytes - self._fed], pcm[self.max_bytes - self._fed:]
            hypothesis = await self._unless_unavailable(self.metrics.recognise(self._stream.feed(piece), len(piece)))
            self._fed += len(piece)
            if hypothesis and hypothesis != self._said:
                self._said = hypothesis
                await self._send(protocol.partial(hypothesis))
            if self._fed == self.max_bytes:   # the limit: this utterance ends here, the rest starts the next
                await self._finish("limit")

    async def _command(self, text: str) -> None:
        try:
            command = json.loads(text)
        except (ValueError, RecursionError):   # not JSON, or nested too deep to read
            command = None
        if not isinstance(command, dict) or command.get("type") != protocol.END["type"]:
            raise Refused(f"unknown message {text[:100]!r}: send audio as binary messages and "
                          f"{json.dumps(protocol.END)} to end an utterance", WSCloseCode.POLICY_VIOLATION,
                          "bad_request")
        await self._finish("end")

    async def _finish(self, reason: str) -> None:
        stream, self._stream = self._stream, None
        text = await self._unless_unavailable(self.metrics.recognise(stream.finish())) if stream else ""
        seconds = self._fed / BYTES_PER_SECOND
        self._fed, self._said = 0, ""
        self.metrics.outcome(ROUTE, "ok")
        await self._send(protocol.final(text, seconds, reason))

    async def _send(self, event: dict) -> None:
        try:
            await asyncio.wait_for(self.ws.send_json(event), self.idle_timeout)
        except TimeoutError:   # its buffers are full: it stopped reading
            raise ConnectionResetError(f"the client read nothing for {self.idle_timeout:g} s") from None

    async def _unless_unavailable(self, work: Awaitable[T]) -> T:
        """The result of `work`; Refused (try again later) when the recogniser is unavailable."""
        try:
            return await work
        except Unavailable as exc:
            log.warning("%s unavailable: %s", self.recognizer.name, exc)
            raise Refused(str(exc), WSCloseCode.TRY_AGAIN_LATER, "unavailable") from None
