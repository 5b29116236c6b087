"""Turning whatever an engine produces into our stream: 16 kHz mono s16le PCM.

Upstream audio arrives in pieces of arbitrary size (HTTP chunks), so every converter here is
incremental: feed() bytes as they come, flush() at the end.
"""
from __future__ import annotations

import io
import itertools
import struct
from typing import BinaryIO

import av
import numpy as np
import soxr

from .engines.base import UpstreamUnavailable

SAMPLE_RATE = 16000


def resample_to_pcm16k(samples: np.ndarray, rate: int) -> bytes:
    """Whole-buffer conversion of int16 mono samples at `rate` to our PCM."""
    if rate != SAMPLE_RATE and len(samples):
        samples = soxr.resample(samples, rate, SAMPLE_RATE)
    return np.asarray(samples, dtype=np.int16).tobytes()


class PcmStream:
    """Raw little-endian int16 PCM at any rate and channel count, resampled as it streams."""

    def __init__(self, rate: int, channels: int = 1) -> None:
        self.channels = channels
        self._frame_bytes = 2 * channels
        self._pending = b""
        self._resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="int16")

    def feed(self, data: bytes) -> bytes:
        data = self._pending + data
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        return self._convert(np.frombuffer(data[:usable], dtype="<i2"), last=False)

    def flush(self) -> bytes:
        self._pending = b""
        return self._convert(np.zeros(0, dtype=np.int16), last=True)

    def _convert(self, samples: np.ndarray, last: bool) -> bytes:
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1).astype(np.int16)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        return samples.astype("<i2").tobytes()


class WavStream:
    """A WAV file arriving in pieces: the header names the rate, the data chunk follows.

    Streaming servers (GPT-SoVITS) send a header with size fields of 0, so sizes are ignored and
    everything after the data chunk header is audio.
    """

    def __init__(self) -> None:
        self._header = b""
        self._pcm: PcmStream | None = None

    def feed(self, data: bytes) -> bytes:
        if self._pcm is not None:
            return self._pcm.feed(data)
        self._header += data
        parsed = self._parse_header(self._header)
        if parsed is None:
            return b""
        (rate, channels), offset = parsed
        self._pcm = PcmStream(rate, channels)
        rest, self._header = self._header[offset:], b""
        return self._pcm.feed(rest)

    def flush(self) -> bytes:
        if self._pcm is None:
            raise UpstreamUnavailable("upstream sent no complete WAV header")
        return self._pcm.flush()

    @staticmethod
    def _parse_header(buf: bytes) -> tuple[tuple[int, int], int] | None:
        if len(buf) < 12:
            return None
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise UpstreamUnavailable(f"upstream audio is not WAV (starts with {buf[:12]!r})")
        pos, fmt = 12, None
        while len(buf) >= pos + 8:
            chunk_id, size = buf[pos:pos + 4], struct.unpack("<I", buf[pos + 4:pos + 8])[0]
            if chunk_id == b"data":
                if fmt is None:
                    raise UpstreamUnavailable("WAV data chunk before its fmt chunk")
                return fmt, pos + 8
            if len(buf) < pos + 8 + size:
                return None
            if chunk_id == b"fmt ":
                encoding, channels, rate = struct.unpack("<HHI", buf[pos + 8:pos + 16])
                bits = struct.unpack("<H", buf[pos + 22:pos + 24])[0]
                if encoding != 1 or bits != 16:
                    raise UpstreamUnavailable(f"WAV must be 16-bit PCM, got format {encoding} with {bits} bits")
                fmt = (rate, channels)
            pos += 8 + size + size % 2
        return None


class AudioTooLong(ValueError):
    """The audio goes on past the length allowed."""


def decode_file(source: bytes | BinaryIO, max_seconds: float | None = None) -> bytes:
    """An audio file (WAV, MP3, Ogg, FLAC, ... anything FFmpeg reads; bytes or a seekable binary
    file) as our PCM. It is decoded frame by frame and AudioTooLong raised as soon as more than
    `max_seconds` have come out: a few compressed megabytes can hold hours of sound (an hour of
    FLAC silence is ~650 kB), which must never all become PCM."""
    limit = None if max_seconds is None else 2 * int(max_seconds * SAMPLE_RATE)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = bytearray()
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else source, "r") as container:
            if not container.streams.audio:
                raise ValueError("the file has no audio stream")
            # None last: what the resampler still holds.
            for frame in itertools.chain(container.decode(container.streams.audio[0]), [None]):
                out += _frames_to_pcm(resampler.resample(frame))
                if limit is not None and len(out) > limit:
                    raise AudioTooLong(f"the audio is longer than {max_seconds:g} s")
    except av.FFmpegError as exc:
        raise ValueError(f"not a readable audio file: {exc}") from exc
    return bytes(out)


def _frames_to_pcm(frames: list) -> bytes:
    return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in frames)


class CompressedStream:
    """MP3 (or another codec without a container) decoded and resampled by FFmpeg as it streams.

    Packets the decoder rejects (an ID3 tag, a Xing header, a damaged frame) are skipped, as
    players do; only a stream with no decodable audio at all is an error.
    """

    def __init__(self, codec: str) -> None:
        self._codec = av.CodecContext.create(codec, "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._decoded = False
        self._last_error: av.FFmpegError | None = None

    def feed(self, data: bytes) -> bytes:
        return self._decode(self._codec.parse(data))

    def flush(self) -> bytes:
        out = self._decode(self._codec.parse(b"") + [None])
        out += _frames_to_pcm(self._resampler.resample(None))
        if not self._decoded and self._last_error is not None:
            raise UpstreamUnavailable(f"could not decode upstream audio: {self._last_error}")
        return out

    def _decode(self, packets: list) -> bytes:
        out = []
        for packet in packets:
            try:
                frames = self._codec.decode(packet)
            except av.FFmpegError as exc:
                self._last_error = exc
                continue
            for frame in frames:
                self._decoded = True
                out.append(_frames_to_pcm(self._resampler.resample(frame)))
        return b"".join(out)
