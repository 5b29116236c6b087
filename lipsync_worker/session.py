"""Sessions: one WebRTC peer each, what it is saying, and the registry of them all."""
from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from typing import AsyncIterator, Callable

from aiortc import (MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)

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
from .speech import SAMPLE_RATE
from .turns import Turn

log = logging.getLogger("lipsync_worker.session")

HISTORY_MESSAGES = 20  # chat turns remembered per session
# What a session says: (sentence, its audio) pairs, made as they are needed.
Sentences = AsyncIterator[tuple[str, AsyncIterator[AudioChunk]]]
VP8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
# A data channel whose reader takes nothing gets no more events past this many unsent bytes.
CHANNEL_BACKLOG = 1 << 20


class CapacityError(Exception):
    pass


class Session:
    def __init__(self, session_id: int, pc: RTCPeerConnection, engine_state: object, events: EventBus,
                 client: str = "", mode: str = "echo", barge_in: bool = True) -> None:
        self.id = session_id
        self.pc = pc
        self.client = client   # the address its offer came from
        self.events = events
        self.channels: list[RTCDataChannel] = []   # the viewer's data channels: its events go there too
        # The viewer's microphone (listening.py): what its speech gets (echo or chat), and whether
        # it silences the avatar.
        self.mode = mode
        self.barge_in = barge_in
        self.listening: asyncio.Task | None = None
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
        # Each queued or speaking utterance, and the samples of it reckoned still to be synthesised.
        self._talks: dict[asyncio.Task, int] = {}
        self._turn = asyncio.Lock()
        # /set_audiotype and /record (clips.py, recording.py)
        self.clip = ClipPlayer()
        self.recording: Recording | None = None

    def publish(self, name: str, **fields) -> None:
        event = self.events.publish(name, self.id, **fields)
        for channel in self.channels:
            if channel.readyState == "open" and channel.bufferedAmount < CHANNEL_BACKLOG:
                channel.send(event.message())

    def _producing(self) -> bool:
        return any(not t.done() for t in self._talks)

    @property
    def speaking(self) -> bool:
        return self.speech.pending > 0 or self._producing()

    @property
    def queued_seconds(self) -> float:
        """Speech this session has still to say: synthesised and unplayed, plus the reckoned
        length of what is not synthesised yet (speech.text_seconds)."""
        return (self.speech.pending + sum(self._talks.values())) / SAMPLE_RATE

    def talk(self, sentences: Sentences, kind: str, seconds: float, turn: Turn | None = None) -> None:
        """Queue an utterance reckoned to last `seconds`; it plays after what is already queued,
        streaming as it comes. `turn`: the spoken turn it answers, timed to its first sound."""
        task = asyncio.create_task(self._talk(sentences, kind, turn))
        self._talks[task] = int(seconds * SAMPLE_RATE)
        task.add_done_callback(self._talked)

    def _talked(self, task: asyncio.Task) -> None:
        # Here, not in _talk: a task cancelled before it started never runs its own finally.
        self._talks.pop(task, None)
        # Synthesis may end after the last samples played: the silence starts now, then.
        self.speech.settle()

    async def _talk(self, sentences: Sentences, kind: str, turn: Turn | None) -> None:
        me = asyncio.current_task()
        async with self._turn:
            METRICS.utterances.labels(kind).inc()
            try:
                async for text, chunks in sentences:
                    started = False
                    async for chunk in chunks:
                        if not started:
                            self.speech.begin_sentence(kind, text)
                            started = True
                        if turn is not None:
                            turn.mark("tts_first_audio")
                            self.speech.when_taken(functools.partial(turn.mark, "first_audio_sent"))
                            turn = None   # timed once: by the first sentence's first chunk
                        self.speech.append(chunk)
                        # Synthesised now: it counts in speech.pending instead.
                        self._talks[me] = max(0, self._talks[me] - len(chunk.pcm) // 2)
                        # The next chunk is pulled from the TTS stream only once playback catches up.
                        await self.speech.room()
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
        if self.listening is not None:
            self.listening.cancel()
        self.interrupt()
        self.video.stop()
        self.audio.stop()
        if self.recording is not None:
            await self.recording.discard()
        await self.pc.close()


class Sessions:
    """Every session of this worker: created by /offer, gone when its peer closes or fails."""

    def __init__(self, stage: Stage, engine_state: Callable[[], object], max_sessions: int,
                 ice_servers: list, connect_timeout: float, events: EventBus | None = None,
                 max_connecting_per_client: int | None = None) -> None:
        self.stage = stage
        self.events = events or EventBus()
        self._engine_state = engine_state
        self.max_sessions = max_sessions
        # An offer holds its slot until it connects or WEBRTC_CONNECT_TIMEOUT passes: without this,
        # one client's offers that never connect could take every slot. None: no such limit.
        self.max_connecting_per_client = max_connecting_per_client
        self._ice_servers = ice_servers
        self._connect_timeout = connect_timeout
        self._sessions: dict[int, Session] = {}
        # What a viewer's microphone track is handed to (the server sets it: it holds the recogniser).
        self.listen: Callable[[Session, MediaStreamTrack], None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def get(self, session_id: int) -> Session | None:
        return self._sessions.get(session_id)

    def connecting(self, client: str) -> int:
        """Sessions offered from `client` and not connected yet."""
        return sum(1 for s in self._sessions.values() if s.client == client and s.pc.connectionState != "connected")

    async def offer(self, sdp: str, kind: str, client: str = "", mode: str = "echo",
                    barge_in: bool = True) -> Session:
        """Answer the offer of a browser at address `client`; ValueError for a bad SDP,
        CapacityError when full or when that client has too many offers still connecting.
        An offer that sends audio (sendrecv or sendonly) gives the worker the viewer's voice."""
        limit = self.max_connecting_per_client
        if limit is not None and self.connecting(client) >= limit:
            raise CapacityError(f"{client} already has {limit} sessions still connecting "
                                f"(MAX_CONNECTING_PER_CLIENT={limit}); try again when one connects, or after "
                                f"WEBRTC_CONNECT_TIMEOUT ({self._connect_timeout:g} s) drops it")
        if len(self._sessions) >= self.max_sessions:
            raise CapacityError(f"this avatar already has {self.max_sessions} sessions (max_session); "
                                "try again when one closes")
        session_id = secrets.randbelow(900000) + 100000
        while session_id in self._sessions:
            session_id = secrets.randbelow(900000) + 100000
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        session = Session(session_id, pc, self._engine_state(), self.events, client, mode, barge_in)
        self._sessions[session_id] = session  # holds the slot while the answer is made

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self.listen is not None:
                self.listen(session, track)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            session.channels.append(channel)

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
               speak: Callable[[str], AsyncIterator[AudioChunk]], turn: Turn | None = None) -> Sentences:
    """The utterance of a chat turn: the LLM's reply, published as it streams and spoken
    sentence by sentence."""
    async def sentences() -> Sentences:
        session.history.append({"role": "user", "content": text})
        reply, pending = [], ""
        try:
            async for delta in llm.deltas(session.history):
                if turn is not None:
                    turn.mark("llm_first_token")
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
