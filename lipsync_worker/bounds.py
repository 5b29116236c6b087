"""Holding the preparation of one upload to its bounds (contracts.bounds: pixels per picture,
pixels decoded from a video, the frame rate a video needs, and the memory its decoding may take).

A small file can decode to gigabytes (a PNG of one colour, a video whose frames are an hour
apart), so limits are checked from the file's header and container metadata before any decoding,
and again while decoding, where metadata can lie. The address-space limit is the last guard: a
decoder asking for more than it may fails with MemoryError, which becomes a refusal, not a crash.
"""
from __future__ import annotations

import contextlib
import os
import resource
import threading
from typing import Iterator

from contracts.avatars import AvatarError
from contracts.bounds import Bounds

MB = 2 ** 20


class TooCostly(AvatarError):
    """The upload would take more pixels or memory to prepare than the bounds allow (HTTP 413)."""


def megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:.1f} MP"


def check_picture(width: int, height: int, bounds: Bounds, what: str = "the picture") -> None:
    """Refuse a picture (or a video frame) of more than max_pixels before it is decoded."""
    if width * height > bounds.max_pixels:
        raise TooCostly(f"{what} is {width}x{height} ({megapixels(width * height)}); at most "
                        f"{megapixels(bounds.max_pixels)} (MAX_IMAGE_PIXELS): scale it down and send it again")


def video_pixels_refusal(pixels: float, width: int, height: int, bounds: Bounds) -> TooCostly:
    return TooCostly(f"the video's first {bounds.max_seconds:g} s decode to {pixels / 1e9:.1f} gigapixels "
                     f"({width}x{height} frames); at most {bounds.max_video_pixels / 1e9:.1f} (MAX_VIDEO_PIXELS): "
                     f"send a shorter clip, or one of lower resolution or frame rate")


def _address_space() -> int:
    """This process's virtual size in bytes (VmSize)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _out_of_memory(exc: BaseException) -> bool:
    # OpenCV reports a failed allocation as cv2.error, not MemoryError.
    text = str(exc)
    return isinstance(exc, MemoryError) or "Insufficient memory" in text or "Failed to allocate" in text


class _Limit:
    """The process's one address-space limit, shared by the threads that decode at once (the
    limit is per process): the first sets it, the last restores what was there before. Without
    the count, two threads restoring in the wrong order would leave the limit on for good, and
    every process started later would inherit it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.before: tuple[int, int] = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)

    def enter(self, memory_mb: int) -> None:
        with self.lock:
            if self.users == 0:
                self.before = soft, hard = resource.getrlimit(resource.RLIMIT_AS)
                limit = _address_space() + memory_mb * MB
                if hard != resource.RLIM_INFINITY:
                    limit = min(limit, hard)
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            self.users += 1

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                resource.setrlimit(resource.RLIMIT_AS, self.before)


_LIMIT = _Limit()


@contextlib.contextmanager
def memory_limit(memory_mb: int) -> Iterator[None]:
    """Within this block the process may grow its address space by at most memory_mb (threads
    decoding at once share it); a decoder that needs more fails, and TooCostly says so. Only the
    soft limit is lowered, and it is restored after: later steps (a GPU model for the MuseTalk
    pass) reserve large address ranges for themselves, and work on frames already decoded."""
    if not memory_mb:
        yield
        return
    _LIMIT.enter(memory_mb)
    try:
        yield
    except Exception as exc:
        if _out_of_memory(exc):
            raise TooCostly(f"the picture needs more than {memory_mb} MB to decode (REGISTER_MEMORY_MB): "
                            f"send a smaller one") from None
        raise
    finally:
        _LIMIT.leave()
