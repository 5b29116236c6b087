"""Sessions: one WebRTC peer each, what it is saying, and the registry of them all."""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import AsyncIterator, Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from tts_services.client import TTSError
from tts_services.engines.base import AudioChunk
from tts_services.text import pop_sentences

from .clips import ClipPlayer
from .events import EventBus
from .llm import ChatLLM, LLMError
from .media import QueueTrack, Stage
from .metrics import METRICS
from .narration import NarratedSpeech
from .recording import Recording

log = logging.getLogger("lipsync_worker.session")

HISTORY_MESSAGES = 20  # chat turns remembered per session
# What a session says: (sentence, its audio) pairs, made as they are needed.
Sentences = AsyncIterator[tuple[str, AsyncIterator[AudioChunk]]]
VP8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]


class CapacityError(Exception):
    pass


class Session:
    def __init__(self, session_id: int, pc: RTCPeerConnection, engine_state: object, events: EventBus) -> None:
        self.id = session_id
        self.pc = pc
        self.events = events
        self.video = QueueTrack("video")
        self.audio = QueueTrack("audio")
        self.speech = NarratedSpeech(self.publish, self._producing)
        self.engine_state = engine_state
        self.tail = 0
        self.video_pts = 0
        self.audio_pts = 0
        self.on_shared_stream = False
        self.history: list[dict] = []
        self.expiry: asyncio.Task | None = None
        self._talks: set[asyncio.Task] = set()
        self._turn = asyncio.Lock()
        # /set_audiotype and /record (clips.py, recording.py)
        self.clip = ClipPlayer()
        self.recording: Recording | None = None

    def publish(self, name: str, **fields) -> None:
        self.events.publish(name, self.id, **fields)

    def _producing(self) -> bool:
        return any(not t.done() for t in self._talks)

    @property
    def speaking(self) -> bool:
        return self.speech.pending > 0 or self._producing()

    def talk(self, sentences: Sentences, kind: str) -> None:
        """Queue an utterance; it plays after what is already queued, streaming as it comes."""
        task = asyncio.create_task(self._talk(sentences, kind))
        self._talks.add(task)
        task.add_done_callback(self._talked)

    def _talked(self, task: asyncio.Task) -> None:
        self._talks.discard(task)
        # Synthesis may end after the last samples played: the silence starts now, then.
        self.speech.settle()

    async def _talk(self, sentences: Sentences, kind: str) -> None:
        async with self._turn:
            METRICS.utterances.labels(kind).inc()
            try:
                async for text, chunks in sentences:
                    started = False
                    async for chunk in chunks:
                        if not started:
                            self.speech.begin_sentence(kind, text)
                            started = True
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
        if self.recording is not None:
            await self.recording.discard()
        await self.pc.close()


class Sessions:
    """Every session of this worker: created by /offer, gone when its peer closes or fails."""

    def __init__(self, stage: Stage, engine_state: Callable[[], object], max_sessions: int,
                 ice_servers: list, connect_timeout: float, events: EventBus | None = None) -> None:
        self.stage = stage
        self.events = events or EventBus()
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
        session = Session(session_id, pc, self._engine_state(), self.events)
        self._sessions[session_id] = session  # holds the slot while the answer is made
        try:
            pc.addTrack(session.audio)
            # VP8 only: idle viewers share one VP8 encoding (media.SharedEncoder).
            pc.addTransceiver(session.video, direction="sendonly").setCodecPreferences(VP8)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            except Exception as exc:  # aiortc's parser raises ValueError, KeyError, IndexError, ...
                raise ValueError(str(exc) or type(exc).__name__) from exc
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self.drop(session_id, "failed")
            raise

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("session %s: %s", session_id, pc.connectionState)
            if pc.connectionState == "connected":
                session.publish("connected")
            elif pc.connectionState == "failed":
                await self.drop(session_id, "failed")
            elif pc.connectionState == "closed":
                await self.drop(session_id, "peer closed")

        self.stage.viewers.append(session)
        METRICS.sessions.set(len(self._sessions))
        session.expiry = asyncio.create_task(self._expire(session))
        return session

    async def _expire(self, session: Session) -> None:
        await asyncio.sleep(self._connect_timeout)
        if session.pc.connectionState != "connected" and self._sessions.get(session.id) is session:
            log.info("session %s: not connected after %.0f s; dropped", session.id, self._connect_timeout)
            await self.drop(session.id, "expired")

    async def drop(self, session_id: int, reason: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        if session in self.stage.viewers:
            self.stage.viewers.remove(session)
        METRICS.sessions.set(len(self._sessions))
        await session.close()
        session.publish("closed", reason=reason)

    async def close_all(self) -> None:
        """Every session ends (the worker is stopping), and so does every event stream."""
        for session_id in list(self._sessions):
            await self.drop(session_id, "worker stopping")
        self.events.close()


def sentence(text: str, chunks: AsyncIterator[AudioChunk]) -> Sentences:
    """An utterance of one sentence: an echoed text (text is spoken as a whole) or an audio file."""
    async def sentences() -> Sentences:
        yield text, chunks
    return sentences()


def chat_reply(llm: ChatLLM, session: Session, text: str,
               speak: Callable[[str], AsyncIterator[AudioChunk]]) -> Sentences:
    """The utterance of a chat turn: the LLM's reply, published as it streams and spoken
    sentence by sentence."""
    async def sentences() -> Sentences:
        session.history.append({"role": "user", "content": text})
        reply, pending = [], ""
        try:
            async for delta in llm.deltas(session.history):
                session.publish("reply", delta=delta)
                reply.append(delta)
                done, pending = pop_sentences(pending + delta)
                for line in done:
                    yield line, speak(line)
            session.publish("reply_end", text="".join(reply))
            if pending.strip():
                yield pending.strip(), speak(pending.strip())
        finally:
            if reply:
                session.history.append({"role": "assistant", "content": "".join(reply)})
            del session.history[:-HISTORY_MESSAGES]
    return sentences()
