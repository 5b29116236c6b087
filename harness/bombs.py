"""Upload bombs: files of a few kilobytes or megabytes that decode to gigabytes, or to hours of
video, made here in a second or two each."""
from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, side: int = 13000) -> Path:
    """A side x side RGBA PNG of one colour. Written row by row (each row 'Up' from the last, so
    all zeros after the first): no full image is ever held here."""
    pack = zlib.compressobj(9)
    first = b"\0" + bytes([30, 120, 200, 255]) * side
    same = b"\2" + bytes(4 * side)
    data = [pack.compress(first)] + [pack.compress(same) for _ in range(side - 1)] + [pack.flush()]
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)  # 8-bit RGBA
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(data))
                     + _chunk(b"IEND", b""))
    return path


def mov_bomb(path: Path, side: int = 16000) -> Path:
    """A one-frame MOV of side x side pixels (PNG-coded, one bit a pixel, so quick to make)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "monob"
        frame = av.VideoFrame.from_ndarray(np.zeros((side, side), np.uint8), format="gray").reformat(format="monob")
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def slow_video(path: Path, width: int = 512, height: int = 512, gap: int = 3600) -> Path:
    """Four frames `gap` seconds apart (an hour by default): a 25 fps resampler would repeat each
    90,000 times. An odd width is allowed (MJPEG in MOV; MP4's MPEG-4 part 2 otherwise)."""
    odd = width % 2 or height % 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg" if odd else "mpeg4", rate=1)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj444p" if odd else "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1)
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 60 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * gap, Fraction(1, 1)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def silent_flac(seconds: int, rate: int = 16000) -> bytes:
    """Digital silence compresses to almost nothing: an hour is ~650 kB of FLAC."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        block = np.zeros((1, rate), np.int16)
        for i in range(seconds):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, i * rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
