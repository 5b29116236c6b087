"""Recordings of what a session's viewer is sent (LiveTalking's /record): H.264 + AAC in MP4.

The Stage hands each recording the picture and the 40 ms of audio of every tick, exactly as the
viewer got them (frames, not the shared VP8 packets idle viewers receive). Encoding runs in the
recording's own thread behind a bounded queue, so it never holds up the 25 fps clock: when the
thread falls behind, ticks are dropped and counted, the previous picture is held in their place
and their audio is silence, so sound and picture stay in step.

A recording ends with end_record, at RECORD_MAX_SECONDS or RECORD_MAX_BYTES, with its session or
at worker shutdown. Each session keeps only its last finished file, for RECORD_RETENTION_SECONDS,
in a private folder (mode 0700) that the worker removes when it stops.
"""
from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import av
import numpy as np

log = logging.getLogger("lipsync_worker.recording")

FPS = 25
SAMPLE_RATE = 16000
QUEUE_TICKS = FPS                  # one second of pictures waits for the encoder, then ticks drop
INDEX_BYTES_PER_PACKET = 16        # what the MP4 index (moov) adds per packet, with room to spare
HEADER_BYTES = 8192                # the MP4's fixed boxes (ftyp, moov's track headers): ~2 KB measured
JOIN_SECONDS = 30.0                # how long to wait for the encoder to finish what is queued
VIDEO_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "crf": "23"}


class Conflict(Exception):
    """Not possible in the recording's present state (HTTP 409)."""


class Missing(Exception):
    """There is no finished recording to give (HTTP 404)."""


class Recording:
    """One MP4 being written by its own thread; add() is called on the event loop, never blocks."""

    def __init__(self, path: Path, max_seconds: float, max_bytes: int, retention_seconds: float) -> None:
        self.path = path
        self.max_ticks = max(1, round(max_seconds * FPS))
        self.max_bytes = max_bytes
        self.retention_seconds = retention_seconds
        self.ticks = 0                 # ticks handed to add(): the length of the recording
        self.dropped = 0               # of those, ticks the encoder was too far behind to take
        self.ended_by = ""             # why it ended: "end_record", a limit, or what failed
        self.removed = False
        self._loop = asyncio.get_running_loop()
        self._queue: queue.Queue = queue.Queue(QUEUE_TICKS)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._failed = False
        self._expiry: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._write, name=f"record-{path.stem}", daemon=True)
        self._thread.start()

    @property
    def state(self) -> str:
        """recording, finishing (the encoder drains its queue), done, failed or removed."""
        if self.removed:
            return "removed"
        if self._done.is_set():
            return "failed" if self._failed else "done"
        return "finishing" if self._stop.is_set() else "recording"

    @property
    def seconds(self) -> float:
        return self.ticks / FPS

    def add(self, i420: np.ndarray, samples: np.ndarray) -> None:
        """One tick: the I420 picture and the 640 samples the viewer was sent."""
        if self._stop.is_set():
            return
        try:
            self._queue.put_nowait((self.ticks, i420, samples))
        except queue.Full:
            self.dropped += 1
        self.ticks += 1
        if self.ticks >= self.max_ticks:
            self._end(f"RECORD_MAX_SECONDS ({self.max_ticks / FPS:g} s)")

    def _end(self, reason: str) -> None:
        if not self._stop.is_set():
            self.ended_by = reason
            self._stop.set()

    async def finish(self, reason: str = "end_record") -> None:
        """Stop taking ticks and wait (bounded) for the file to be complete."""
        self._end(reason)
        await asyncio.to_thread(self._thread.join, JOIN_SECONDS)

    async def discard(self) -> None:
        """Stop, wait for the thread (bounded) and remove the file."""
        await self.finish("the session closed")
        self.remove()

    def remove(self) -> None:
        """The file gone: its retention time passed, a new recording replaced it, or its session closed."""
        self.removed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self.path.unlink(missing_ok=True)

    def _finished(self) -> None:
        """On the loop, once the thread is done: the file is kept for the retention time."""
        if not self.removed:
            self._expiry = self._loop.call_later(self.retention_seconds, self.remove)

    def _write(self) -> None:
        try:
            self._encode()
            if not self.path.exists():  # PyAV writes nothing until the first packet
                self._fail("it ended before its first frame")
        except Exception as exc:  # disk full, an encoder error: the recording fails, the worker goes on
            log.exception("recording %s failed", self.path.name)
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self._done.set()
            if self.dropped:
                log.warning("recording %s: %d of %d ticks dropped (encoder behind)",
                            self.path.name, self.dropped, self.ticks)
            try:
                self._loop.call_soon_threadsafe(self._finished)
            except RuntimeError:  # the loop is closed: the worker is stopping and removes the folder
                pass

    def _fail(self, reason: str) -> None:
        self._failed = True
        self.ended_by = reason
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def _encode(self) -> None:
        with av.open(str(self.path), "w", format="mp4") as container:
            writer = _Writer(container, self.max_bytes)
            for tick, i420, samples in self._queued():
                if not writer.add(tick, i420, samples):
                    self._end(f"RECORD_MAX_BYTES ({self.max_bytes} bytes)")
                    break
            else:
                writer.hold_until(self.ticks)  # the last ticks may have been dropped too
            writer.flush()

    def _queued(self):
        """The ticks add() queues, until the recording is stopped and they are all taken."""
        while True:
            try:
                yield self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return


class _Writer:
    """The encoders and the byte budget of one file."""

    def __init__(self, container, max_bytes: int) -> None:
        self.container = container
        self.budget = max_bytes - HEADER_BYTES
        self.video = None
        self.audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self.next_tick = 0
        self._last: tuple[np.ndarray, int] | None = None    # the last picture, samples per tick

    def add(self, tick: int, i420: np.ndarray, samples: np.ndarray) -> bool:
        """Encode one tick; False (nothing written) when its packets would pass the byte budget."""
        if self.video is None:
            self.video = self._video_stream(i420.shape[1], i420.shape[0] * 2 // 3)
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        # A tick dropped before this one: the previous picture stays up (pts jumps) and its
        # audio is silence, so what follows stays in sync.
        frame.pts, frame.time_base = tick, fractions.Fraction(1, FPS)
        gap = np.zeros((tick - self.next_tick) * len(samples), np.int16)
        sound = av.AudioFrame.from_ndarray(np.concatenate([gap, samples]).reshape(1, -1), format="s16",
                                           layout="mono")
        sound.sample_rate = SAMPLE_RATE
        sound.pts, sound.time_base = self.next_tick * len(samples), fractions.Fraction(1, SAMPLE_RATE)
        self.next_tick = tick + 1
        self._last = i420, len(samples)
        packets = [*self.video.encode(frame), *self.audio.encode(sound)]
        return self._mux(packets)

    def hold_until(self, ticks: int) -> None:
        """Make the file last `ticks`: the last picture held, silence under it."""
        if self._last is not None and self.next_tick < ticks:
            picture, samples = self._last
            self.add(ticks - 1, picture, np.zeros(samples, np.int16))

    def _video_stream(self, width: int, height: int):
        stream = self.container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, FPS)
        # One thread: the Stage and the WebRTC senders need the other cores more than this file.
        stream.codec_context.thread_count = 1
        stream.options = VIDEO_OPTIONS
        return stream

    def _mux(self, packets: list) -> bool:
        cost = sum(packet.size + INDEX_BYTES_PER_PACKET for packet in packets)
        if cost > self.budget:
            return False
        self.budget -= cost
        self.container.mux(packets)
        return True

    def flush(self) -> None:
        """What the encoders still hold, within the budget; a recording without a picture has
        no video stream to flush."""
        packets = [*(self.video.encode(None) if self.video is not None else []), *self.audio.encode(None)]
        self._mux(packets)


class Recordable(Protocol):
    id: int
    recording: Recording | None


class Recorder:
    """The worker's recordings: a private folder, the limits, one recording per session at a time."""

    def __init__(self, max_seconds: float, max_bytes: int, retention_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.retention_seconds = retention_seconds
        self._folder: Path | None = None
        self._count = 0

    def start(self, session: Recordable) -> None:
        """A new recording of the session, replacing its last finished one; Conflict while one runs."""
        last = session.recording
        if last is not None and last.state in ("recording", "finishing"):
            raise Conflict(f"session {session.id} is already recording; send end_record first")
        if last is not None:
            last.remove()
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="lipsync-recordings-"))
        self._count += 1
        session.recording = Recording(self._folder / f"{session.id}-{self._count}.mp4", self.max_seconds,
                                      self.max_bytes, self.retention_seconds)

    async def end(self, session: Recordable) -> Recording:
        """The session's recording, finished; Conflict when none is running."""
        recording = session.recording
        if recording is None or recording.state not in ("recording", "finishing"):
            ended = f" (the last one ended: {recording.ended_by})" if recording is not None else ""
            raise Conflict(f"session {session.id} is not recording{ended}")
        await recording.finish()
        return recording

    @staticmethod
    def file(session: Recordable) -> Path:
        """The session's last finished MP4; Conflict while recording, Missing when there is none."""
        recording = session.recording
        if recording is None:
            raise Missing(f"session {session.id} has no recording; start one with start_record")
        state = recording.state
        if state in ("recording", "finishing"):
            raise Conflict(f"session {session.id} is still recording; send end_record first")
        if state == "failed":
            raise Missing(f"the last recording of session {session.id} has no file: {recording.ended_by}")
        if state == "removed":
            raise Missing(f"the last recording of session {session.id} was removed after "
                          f"RECORD_RETENTION_SECONDS ({recording.retention_seconds:g} s)")
        return recording.path

    def close(self) -> None:
        """At shutdown, after every session closed: the folder and anything left in it go."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
