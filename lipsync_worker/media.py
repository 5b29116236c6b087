"""The one clock of the worker and the WebRTC tracks it feeds.

Every 40 ms the Stage takes 40 ms of speech from each session, renders the video frame for
those same samples (one engine call for all speaking sessions), and pushes the frame and the
first 20 ms audio packet; the second audio packet follows 20 ms later. Sound and picture come
from one clock and one window of samples, so they cannot drift apart.

Viewers at rest all see the same picture, so it is encoded once (SharedEncoder) and every idle
viewer's sender gets the same VP8 packets: an idle viewer costs packetisation, not encoding.
A speaking viewer's frames go to its own sender's encoder, and so do the frames of a viewer at
rest playing a clip of its own (/set_audiotype). A viewer switching between the two
streams gets a keyframe first, and the shared stream repeats one every KEYFRAME_SECONDS for
viewers that lost packets (its senders cannot answer their keyframe requests).
"""
from __future__ import annotations

import asyncio
import fractions
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .animation import IdleAnimation
from .avatars import Avatar
from .clips import ClipPlayer
from .engines import FrameJob, LipSyncEngine
from .metrics import METRICS
from .recording import Recording
from .speech import SAMPLE_RATE, SpeechBuffer

log = logging.getLogger("lipsync_worker.media")

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS          # 640: 40 ms
SAMPLES_PER_PACKET = SAMPLES_PER_FRAME // 2     # 320: 20 ms
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
TAIL_FRAMES = 4                                  # keep rendering briefly so the mouth closes softly
QUEUE_FRAMES = 3                                 # a slow viewer loses old frames, never lags
KEYFRAME_SECONDS = 5
SHARED_BITRATE = 1_000_000
NOTHING = np.zeros(0, np.int16)


class QueueTrack(MediaStreamTrack):
    """A track whose frames are pushed by the Stage; a slow reader drops the oldest."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue = asyncio.Queue(QUEUE_FRAMES)

    def push(self, frame) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            METRICS.dropped.labels(self.kind).inc()
        self._queue.put_nowait(frame)

    def clear(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        METRICS.frames_sent.labels(self.kind).inc()
        return frame


class SharedEncoder:
    """One real-time VP8 encoding of the idle picture, for every viewer at rest."""

    def __init__(self) -> None:
        self._codec: av.VideoCodecContext | None = None
        self._keyframe_due = True
        self._count = 0

    def request_keyframe(self) -> None:
        self._keyframe_due = True

    def encode(self, i420: np.ndarray) -> bytes:
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        if self._codec is None or (frame.width, frame.height) != (self._codec.width, self._codec.height):
            self._codec = av.CodecContext.create("libvpx", "w")
            self._codec.width, self._codec.height = frame.width, frame.height
            self._codec.pix_fmt = "yuv420p"
            self._codec.bit_rate = SHARED_BITRATE
            # One thread, as aiortc uses below 640x480: with FFmpeg's default (one per core) the
            # encode waits for a second core the senders are using, up to tens of milliseconds.
            self._codec.thread_count = 1
            # Constant bitrate with a one-second buffer, like aiortc's own VP8 encoder, so a
            # keyframe cannot take the budget of the frames after it.
            self._codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0",
                                   "bufsize": str(SHARED_BITRATE), "minrate": str(SHARED_BITRATE),
                                   "maxrate": str(SHARED_BITRATE), "static-thresh": "1",
                                   "undershoot-pct": "100", "overshoot-pct": "15"}
            self._keyframe_due = True
        if self._keyframe_due or self._count % (KEYFRAME_SECONDS * FPS) == 0:
            frame.pict_type = av.video.frame.PictureType.I
            self._keyframe_due = False
        self._count += 1
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))


class Viewer(Protocol):
    """What the Stage needs of a session."""
    speech: SpeechBuffer
    engine_state: object
    video: QueueTrack
    audio: QueueTrack
    tail: int
    video_pts: int
    audio_pts: int
    on_shared_stream: bool
    clip: ClipPlayer
    recording: Recording | None


class Stage:
    def __init__(self, animation: IdleAnimation, engine: LipSyncEngine) -> None:
        self.animation = animation
        self.engine = engine
        self.shared = SharedEncoder()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine") if engine.slow else None
        self.viewers: list[Viewer] = []
        self.fps = 0.0
        self._ticks: list[float] = []

    async def load(self, avatar: Avatar) -> None:
        """The engine's load and warm-up, in the thread its frames are rendered in."""
        await self._engine_call(self.engine.load, avatar)

    async def _engine_call(self, method, *args):
        """Inline unless the engine is slow (a model): getting a result back from a thread can
        take tens of milliseconds on a busy loop, far more than a cheap frame costs."""
        if self.engine.slow:
            return await asyncio.get_running_loop().run_in_executor(self._executor, method, *args)
        return method(*args)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start, tick = loop.time(), 0
        while True:
            try:
                await self._tick(tick, start + (tick + 0.5) / FPS)
            except Exception:
                # One bad frame must not stop the clock: every viewer would freeze.
                log.exception("tick %d failed", tick)
            tick += 1
            delay = start + tick / FPS - loop.time()
            if delay < -0.2:
                # Far behind (the machine stalled): restart the schedule instead of bursting.
                log.warning("clock %.0f ms behind; resynchronising", -1000 * delay)
                start, delay = loop.time() - tick / FPS, 0
            await asyncio.sleep(max(0.0, delay))

    async def _tick(self, n: int, half_time: float) -> None:
        now = time.monotonic()
        self._ticks = [t for t in self._ticks if now - t < 1.0] + [now]
        if len(self._ticks) > 1:
            self.fps = round((len(self._ticks) - 1) / (self._ticks[-1] - self._ticks[0]), 1)
        viewers = list(self.viewers)
        if not viewers:
            return
        index, base, regions = self.animation.frame(n)
        jobs, talking, audio = [], [], []
        lookahead = self.engine.lookahead
        for viewer in viewers:
            speaking = viewer.speech.pending > 0
            samples, phoneme = viewer.speech.take(SAMPLES_PER_FRAME)
            audio.append(samples)
            viewer.tail = TAIL_FRAMES if speaking else max(0, viewer.tail - 1)
            if viewer.tail:
                ahead = viewer.speech.peek(lookahead) if lookahead else NOTHING
                jobs.append(FrameJob(index, base, regions, samples, phoneme, viewer.engine_state, n, ahead,
                                     viewer.speech.version))
                talking.append(viewer)
        try:
            rendered = await self._render(jobs) if jobs else []
        except Exception:
            # The voice goes on with a still mouth rather than the picture stopping.
            log.exception("engine %s failed on %d frames", self.engine.name, len(jobs))
            rendered = [job.base for job in jobs]
        # Each viewer's picture of this tick as I420, also what a recording of it keeps.
        pictures: dict[int, np.ndarray] = {}
        own = list(zip(talking, rendered))
        idle = []
        for viewer in viewers:
            if not viewer.tail:
                clip_frame = viewer.clip.next_frame()
                if clip_frame is None:
                    idle.append(viewer)
                else:
                    own.append((viewer, clip_frame))
        for viewer, frame in own:
            pictures[id(viewer)] = to_i420(frame)
            video = av.VideoFrame.from_ndarray(pictures[id(viewer)], format="yuv420p")
            if viewer.on_shared_stream:
                # Its decoder holds the shared stream's pictures: start its own with a keyframe.
                video.pict_type = av.video.frame.PictureType.I
                viewer.on_shared_stream = False
            self._push_video(viewer, video)
        if idle:
            if not all(viewer.on_shared_stream for viewer in idle):
                self.shared.request_keyframe()
            picture = to_i420(base)
            data = self.shared.encode(picture)  # ~1 ms: inline (see _engine_call)
            for viewer in idle:
                pictures[id(viewer)] = picture
                viewer.on_shared_stream = True
                self._push_video(viewer, av.Packet(data))
        for viewer, samples in zip(viewers, audio):
            self._push_audio(viewer, samples[:SAMPLES_PER_PACKET])
            if viewer.recording is not None:
                viewer.recording.add(pictures[id(viewer)], samples)
        asyncio.get_running_loop().call_at(half_time, self._push_second_half, viewers, audio)

    async def _render(self, jobs: list[FrameJob]) -> list[np.ndarray]:
        size = self.engine.batch_size
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(jobs), size):
            batch = jobs[i:i + size]
            METRICS.engine_batch.observe(len(batch))
            out += await self._engine_call(self.engine.render, batch)
        METRICS.engine_seconds.observe((time.perf_counter() - t0) / len(jobs))
        return out

    def _push_second_half(self, viewers: list[Viewer], audio: list[np.ndarray]) -> None:
        for viewer, samples in zip(viewers, audio):
            self._push_audio(viewer, samples[SAMPLES_PER_PACKET:])

    @staticmethod
    def _push_video(viewer: Viewer, frame: av.VideoFrame | av.Packet) -> None:
        frame.pts, frame.time_base = viewer.video_pts, VIDEO_TIME_BASE
        viewer.video_pts += 90000 // FPS
        viewer.video.push(frame)

    @staticmethod
    def _push_audio(viewer: Viewer, samples: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts, frame.time_base = viewer.audio_pts, AUDIO_TIME_BASE
        viewer.audio_pts += len(samples)
        viewer.audio.push(frame)


def to_i420(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
