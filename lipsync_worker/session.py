"""Sessions: one WebRTC peer each, what it is saying, and the registry of them all."""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import AsyncIterator, Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from tts_services.client import TTSError
from tts_services.engines.base import AudioChunk

from .llm import ChatLLM, LLMError
from .media import QueueTrack, Stage
from .metrics import METRICS
from .speech import SpeechBuffer

log = logging.getLogger("lipsync_worker.session")

HISTORY_MESSAGES = 20  # chat turns remembered per session
VP8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]


class CapacityError(Exception):
    pass


class Session:
    def __init__(self, session_id: int, pc: RTCPeerConnection, engine_state: object) -> None:
        self.id = session_id
        self.pc = pc
        self.video = QueueTrack("video")
        self.audio = QueueTrack("audio")
        self.speech = SpeechBuffer()
        self.engine_state = engine_state
        self.tail = 0
        self.video_pts = 0
        self.audio_pts = 0
        self.on_shared_stream = False
        self.history: list[dict] = []
        self.expiry: asyncio.Task | None = None
        self._talks: set[asyncio.Task] = set()
        self._turn = asyncio.Lock()

    @property
    def speaking(self) -> bool:
        return self.speech.pending > 0 or any(not t.done() for t in self._talks)

    def talk(self, chunks: Callable[[], AsyncIterator[AudioChunk]], kind: str) -> None:
        """Queue an utterance; it plays after what is already queued, streaming as it comes."""
        task = asyncio.create_task(self._talk(chunks, kind))
        self._talks.add(task)
        task.add_done_callback(self._talks.discard)

    async def _talk(self, chunks: Callable[[], AsyncIterator[AudioChunk]], kind: str) -> None:
        async with self._turn:
            METRICS.utterances.labels(kind).inc()
            try:
                async for chunk in chunks():
                    self.speech.append(chunk)
            except (TTSError, LLMError) as exc:
                log.warning("session %s: %s failed: %s", self.id, kind, exc)

    def interrupt(self) -> None:
        """Silence from the next frame on: queued speech dropped, synthesis in flight cancelled."""
        for task in self._talks:
            task.cancel()
        self.speech.clear()
        # Frames already queued for the senders would still play: drop them too.
        self.audio.clear()
        self.video.clear()

    async def close(self) -> None:
        if self.expiry is not None and self.expiry is not asyncio.current_task():
            self.expiry.cancel()
        self.interrupt()
        self.video.stop()
        self.audio.stop()
        await self.pc.close()


class Sessions:
    """Every session of this worker: created by /offer, gone when its peer closes or fails."""

    def __init__(self, stage: Stage, engine_state: Callable[[], object], max_sessions: int,
                 ice_servers: list, connect_timeout: float) -> None:
        self.stage = stage
        self._engine_state = engine_state
        self.max_sessions = max_sessions
        self._ice_servers = ice_servers
        self._connect_timeout = connect_timeout
        self._sessions: dict[int, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def get(self, session_id: int) -> Session | None:
        return self._sessions.get(session_id)

    async def offer(self, sdp: str, kind: str) -> Session:
        """Answer a browser's offer; ValueError for a bad SDP, CapacityError when full."""
        if len(self._sessions) >= self.max_sessions:
            raise CapacityError(f"this avatar already has {self.max_sessions} sessions (max_session); "
                                "try again when one closes")
        session_id = secrets.randbelow(900000) + 100000
        while session_id in self._sessions:
            session_id = secrets.randbelow(900000) + 100000
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        session = Session(session_id, pc, self._engine_state())
        self._sessions[session_id] = session  # holds the slot while the answer is made
        try:
            pc.addTrack(session.audio)
            # VP8 only: idle viewers share one VP8 encoding (media.SharedEncoder).
            pc.addTransceiver(session.video, direction="sendonly").setCodecPreferences(VP8)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self.drop(session_id)
            raise

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("session %s: %s", session_id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.drop(session_id)

        self.stage.viewers.append(session)
        METRICS.sessions.set(len(self._sessions))
        session.expiry = asyncio.create_task(self._expire(session))
        return session

    async def _expire(self, session: Session) -> None:
        await asyncio.sleep(self._connect_timeout)
        if session.pc.connectionState != "connected" and self._sessions.get(session.id) is session:
            log.info("session %s: not connected after %.0f s; dropped", session.id, self._connect_timeout)
            await self.drop(session.id)

    async def drop(self, session_id: int) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        if session in self.stage.viewers:
            self.stage.viewers.remove(session)
        METRICS.sessions.set(len(self._sessions))
        await session.close()

    async def close_all(self) -> None:
        for session_id in list(self._sessions):
            await self.drop(session_id)


def chat_reply(llm: ChatLLM, session: Session, text: str,
               speak: Callable[[str], AsyncIterator[AudioChunk]]) -> Callable[[], AsyncIterator[AudioChunk]]:
    """The utterance of a chat turn: the LLM's reply spoken sentence by sentence as it streams."""
    async def chunks() -> AsyncIterator[AudioChunk]:
        session.history.append({"role": "user", "content": text})
        reply = []
        try:
            async for sentence in llm.sentences(session.history):
                reply.append(sentence)
                async for chunk in speak(sentence):
                    yield chunk
        finally:
            if reply:
                session.history.append({"role": "assistant", "content": " ".join(reply)})
            del session.history[:-HISTORY_MESSAGES]
    return chunks
