"""Listening to a viewer: their microphone track in, spoken turns out.

The track's audio (48 kHz Opus from a browser) is resampled to 16 kHz and judged by the VAD one
32 ms window at a time. When speech starts, an avatar that is talking is silenced (barge-in) and
the speech, with the moment before it, streams to the recognition server as it arrives. When it
ends, the final transcript is handed on as a turn: answered by the LLM, or said back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from asr_services.client import ASRClient, ASRError
from contracts.asr_models import SAMPLE_RATE

from .metrics import METRICS
from .turns import Turn
from .vad import WINDOW, Change, VadSettings, VoiceActivity

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("lipsync_worker.listening")

# Windows kept from before the VAD's start and sent with the speech: the VAD fires a window or two
# into a word, and a recogniser given the word without its onset mishears it.
PRE_ROLL_WINDOWS = 10   # 320 ms

Reply = Callable[["Session", str, Turn], None]


class Listener:
    def __init__(self, session: Session, track: MediaStreamTrack, vad: VadSettings, asr: ASRClient,
                 language: str, reply: Reply) -> None:
        self.session = session
        self.track = track
        self.activity = VoiceActivity(vad)
        self.asr = asr
        self.language = language
        self.reply = reply
        self._before: deque[bytes] = deque(maxlen=PRE_ROLL_WINDOWS)
        # What the recognition in flight reads: the speech, then its Turn, or None when it was too short.
        self._speech: asyncio.Queue[bytes | Turn | None] | None = None
        self._recognitions: set[asyncio.Task] = set()
        self._last_voiced = 0.0

    async def run(self) -> None:
        """Until the track ends (the viewer left); the session cancels it when it closes."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        pending = np.zeros(0, np.int16)
        try:
            while True:
                try:
                    frame = await self.track.recv()
                except MediaStreamError:
                    return
                arrived = time.monotonic()
                for out in resampler.resample(frame):
                    pending = np.concatenate([pending, out.to_ndarray().reshape(-1)])
                while len(pending) >= WINDOW:
                    self._hear(pending[:WINDOW], arrived)
                    pending = pending[WINDOW:]
        finally:
            for task in self._recognitions:
                task.cancel()

    def _hear(self, window: np.ndarray, arrived: float) -> None:
        voiced = self.activity.voiced
        change = self.activity.feed(window)
        pcm = window.tobytes()
        if change is Change.STARTED:
            self._started(pcm, arrived)
        elif self._speech is not None:
            self._speech.put_nowait(pcm)   # bounded: VadSettings.max_speech_s ends every turn
        else:
            self._before.append(pcm)
        if self.activity.voiced != voiced:
            self._last_voiced = arrived
        if change is Change.ENDED:
            self._ended()

    def _started(self, pcm: bytes, arrived: float) -> None:
        session = self.session
        interrupted = session.barge_in and session.speaking
        if interrupted:
            session.interrupt()
            METRICS.barge_in.observe(time.monotonic() - arrived)
        session.publish("speech_started", barge_in=interrupted)
        self._speech = asyncio.Queue()
        for earlier in self._before:
            self._speech.put_nowait(earlier)
        self._before.clear()
        self._speech.put_nowait(pcm)
        previous = set(self._recognitions)
        task = asyncio.create_task(self._recognise(self._speech, previous))
        self._recognitions.add(task)
        task.add_done_callback(self._recognitions.discard)

    def _ended(self) -> None:
        speech, self._speech = self._speech, None
        seconds = round(self.activity.voiced / SAMPLE_RATE, 2)
        if not self.activity.long_enough:
            self.session.publish("speech_ended", seconds=seconds, ignored=True)
            METRICS.turns.labels("too_short").inc()
            speech.put_nowait(None)
            return
        turn = Turn(self._last_voiced)
        turn.mark("vad_end")
        self.session.publish("speech_ended", seconds=seconds, ignored=False)
        speech.put_nowait(turn)

    async def _recognise(self, speech: asyncio.Queue[bytes | Turn | None], previous: set[asyncio.Task]) -> None:
        """One utterance streamed to the recogniser as it is spoken; its transcript becomes a
        turn once the turns before it have been handed on, so that answers keep their order."""
        def partial(text: str) -> None:
            self.session.publish("transcript_partial", text=text)

        try:
            async with self.asr.utterance(self.language, partial) as utterance:
                while isinstance(item := await speech.get(), bytes):
                    await utterance.send(item)
                if item is None:
                    return   # too short to be a turn
                text = await utterance.finish()
        except ASRError as exc:
            METRICS.turns.labels("asr_failed").inc()
            log.warning("session %s: speech recognition failed: %s", self.session.id, exc)
            self.session.publish("error", message=f"speech recognition failed: {exc}")
            return
        if previous:
            await asyncio.wait(previous)
        item.mark("transcript")
        self.session.publish("transcript", text=text)
        if not text.strip():
            METRICS.turns.labels("unrecognised").inc()
            return
        METRICS.turns.labels("answered").inc()
        self.reply(self.session, text, item)
