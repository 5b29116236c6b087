"""A real WebRTC viewer (aiortc) of a lip-sync worker, recording what it receives and when."""
from __future__ import annotations

import asyncio
import fractions
import json
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

MIC_RATE = 16000
MIC_PACKET = MIC_RATE // 50     # 20 ms


@dataclass
class Received:
    video: list[tuple[float, int, int]] = field(default_factory=list)    # (arrival, width, height)
    audio: list[tuple[float, float]] = field(default_factory=list)        # (arrival, RMS level)
    # (arrival, -dBov) of each audio RTP packet as it comes off the network, before aiortc's
    # receiver holds 4 packets (80 ms) in its jitter buffer: what the sender sent, and when.
    rtp_levels: list[tuple[float, int]] = field(default_factory=list)
    mouth: list[tuple[float, np.ndarray]] = field(default_factory=list)   # (arrival, grey mouth crop)
    events: list[tuple[float, dict]] = field(default_factory=list)        # (arrival, data channel message)

    def named(self, name: str) -> list[dict]:
        return [event for _, event in self.events if event["event"] == name]


class Microphone(MediaStreamTrack):
    """A viewer's microphone: silence, and what say() is given, sent in real time in 20 ms
    frames; `said` holds when each utterance's first and last samples went out."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[np.ndarray] = []      # utterances, each int16 at MIC_RATE
        self._position = 0                      # in the first utterance
        self._start: float | None = None
        self._pts = 0
        self.said: list[list[float]] = []       # [first sample sent, last sample sent] per utterance

    def say(self, pcm: bytes) -> None:
        """Queue 16 kHz mono s16le speech after what is queued."""
        self._queue.append(np.frombuffer(pcm, "<i2"))

    @property
    def saying(self) -> bool:
        return bool(self._queue)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._pts / MIC_RATE - time.monotonic()))
        samples = np.zeros(MIC_PACKET, np.int16)
        if self._queue:
            utterance = self._queue[0]
            if self._position == 0:
                self.said.append([time.monotonic(), 0.0])
            chunk = utterance[self._position:self._position + MIC_PACKET]
            samples[:len(chunk)] = chunk
            self._position += len(chunk)
            if self._position >= len(utterance):
                self.said[-1][1] = time.monotonic()
                self._queue.pop(0)
                self._position = 0
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, MIC_RATE)
        self._pts += MIC_PACKET
        return frame


class Viewer:
    """microphone: sent to the worker (an audio track sendrecv); events: open an "events" data
    channel and keep what comes on it; offer: more fields of the offer (mode, barge_in)."""

    def __init__(self, url: str, mouth: tuple[int, int, int, int] | None = None, decode_video: bool = True,
                 microphone: Microphone | None = None, events: bool = False, **offer) -> None:
        self.url = url
        self.mouth = mouth
        self.decode_video = decode_video
        self.microphone = microphone
        self.events = events
        self.offer = offer
        self.received = Received()
        self.sessionid: int | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tasks: list[asyncio.Task] = []

    async def connect(self, http: aiohttp.ClientSession, timeout: float = 10.0) -> "Viewer":
        self.pc.addTransceiver("video", direction="recvonly")
        if self.microphone is None:
            self.pc.addTransceiver("audio", direction="recvonly")
        else:
            self.pc.addTransceiver(self.microphone, direction="sendrecv")
        self.pc.on("track", self._on_track)
        if self.events:
            channel = self.pc.createDataChannel("events")
            channel.on("message", lambda message: self.received.events.append((time.monotonic(), json.loads(message))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(self.url + "/offer", json={"sdp": self.pc.localDescription.sdp,
                                                        "type": self.pc.localDescription.type,
                                                        **self.offer}) as response:
            answer = await response.json()
            if response.status != 200:
                raise RuntimeError(f"/offer answered {response.status}: {answer}")
        self.sessionid = answer["sessionid"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if time.monotonic() > deadline:
                raise TimeoutError(f"not connected after {timeout} s ({self.pc.connectionState})")
            await asyncio.sleep(0.02)
        return self

    def _on_track(self, track) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        handle = receiver._handle_rtp_packet
        if track.kind == "audio":
            async def record_level(packet, arrival_time_ms):
                if packet.extensions.audio_level is not None:
                    self.received.rtp_levels.append((time.monotonic(), packet.extensions.audio_level[1]))
                return await handle(packet, arrival_time_ms)

            receiver._handle_rtp_packet = record_level
        elif not self.decode_video:
            # Time each frame by the arrival of its first packet and decode nothing: a benchmark
            # with many viewers in one process then measures the sender, not this client's CPU.
            last = []

            async def record_frame(packet, arrival_time_ms):
                if not last or packet.timestamp != last[0]:
                    last[:] = [packet.timestamp]
                    self.received.video.append((time.monotonic(), 0, 0))

            receiver._handle_rtp_packet = record_frame
            return
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "audio":
                    samples = frame.to_ndarray().astype(np.float32)
                    self.received.audio.append((now, float(np.sqrt(np.mean(samples ** 2)))))
                else:
                    self.received.video.append((now, frame.width, frame.height))
                    if self.mouth and self.decode_video:
                        x1, y1, x2, y2 = self.mouth
                        grey = frame.to_ndarray(format="gray")
                        self.received.mouth.append((now, grey[y1:y2 + (y2 - y1), x1:x2].astype(np.float32)))
        except MediaStreamError:
            pass

    async def post(self, http: aiohttp.ClientSession, path: str, **body) -> tuple[int, dict]:
        async with http.post(self.url + path, json={"sessionid": self.sessionid, **body}) as response:
            return response.status, await response.json()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


def speech_at_network(levels: list[tuple[float, int]], since: float) -> float | None:
    """Arrival time of the first RTP audio packet after `since` whose level says speech (-dBov < 60)."""
    return next((t for t, level in levels if t >= since and level < 60), None)


def fps(times: list[float], start: float, end: float) -> float:
    return sum(start <= t < end for t in times) / (end - start)


def video_timing(received: list[Received], start: float, end: float) -> dict[str, float]:
    """Video frames per second in [start, end), the mean and the lowest over the viewers, and the
    99th percentile of the intervals between consecutive frames over all of them, in ms."""
    rates, intervals = [], []
    for got in received:
        times = [t for t, *_ in got.video if start <= t < end]
        rates.append(fps(times, start, end))
        intervals += list(np.diff(times))
    if not intervals:
        raise RuntimeError("no viewer received two video frames")
    return {"fps": statistics.mean(rates), "fps_min": min(rates), "p99_ms": 1000 * float(np.percentile(intervals, 99))}


def loud_after(audio: list[tuple[float, float]], since: float, level: float) -> float | None:
    """Arrival time of the first audio frame louder than `level` after `since`."""
    return next((t for t, rms in audio if t >= since and rms > level), None)


def quiet_after(audio: list[tuple[float, float]], since: float, level: float) -> float | None:
    """Arrival time from which every later frame stays quieter than `level`."""
    later = [(t, rms) for t, rms in audio if t >= since]
    for i, (t, _) in enumerate(later):
        if all(rms < level for _, rms in later[i:]):
            return t
    return None


def mouth_motion(mouth: list[tuple[float, np.ndarray]], start: float, end: float) -> float:
    """Mean absolute change of the mouth region between consecutive frames in [start, end)."""
    crops = [c for t, c in mouth if start <= t < end]
    diffs = [float(np.mean(np.abs(a - b))) for a, b in zip(crops, crops[1:])]
    return float(np.mean(diffs)) if diffs else 0.0
