"""A real WebRTC viewer (aiortc) of a lip-sync worker, recording what it receives and when."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError


@dataclass
class Received:
    video: list[tuple[float, int, int]] = field(default_factory=list)    # (arrival, width, height)
    audio: list[tuple[float, float]] = field(default_factory=list)        # (arrival, RMS level)
    # (arrival, -dBov) of each audio RTP packet as it comes off the network, before aiortc's
    # receiver holds 4 packets (80 ms) in its jitter buffer: what the sender sent, and when.
    rtp_levels: list[tuple[float, int]] = field(default_factory=list)
    mouth: list[tuple[float, np.ndarray]] = field(default_factory=list)   # (arrival, grey mouth crop)


class Viewer:
    def __init__(self, url: str, mouth: tuple[int, int, int, int] | None = None, decode_video: bool = True) -> None:
        self.url = url
        self.mouth = mouth
        self.decode_video = decode_video
        self.received = Received()
        self.sessionid: int | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tasks: list[asyncio.Task] = []

    async def connect(self, http: aiohttp.ClientSession, timeout: float = 10.0) -> "Viewer":
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(self.url + "/offer", json={"sdp": self.pc.localDescription.sdp,
                                                        "type": self.pc.localDescription.type}) as response:
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
