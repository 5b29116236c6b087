"""What preparing one upload may cost: pixels per picture, pixels decoded from a video, the frame
rate a video needs, and the memory its decoding may take. The manager sets them from its settings
(MAX_IMAGE_PIXELS, MAX_VIDEO_PIXELS, REGISTER_MEMORY_MB); the worker enforces them
(lipsync_worker.bounds)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    # A photo, or one frame of a video: 48 MP phone photos and 8K video (33 MP) fit.
    max_pixels: int = 50_000_000
    # Pixels decoded from a video's first max_seconds: 10 s of 4K at 30 fps (2.5 Gpx) fit.
    max_video_pixels: int = 2_500_000_000
    max_seconds: float = 10.0
    # Under this a "video" is a slide show (or a file made to repeat one frame for hours); an
    # avatar at 25 fps would hold each picture for several frames.
    min_fps: float = 5.0
    # Address space decoding may add to what the process holds already; 0: no limit.
    memory_mb: int = 2048


DEFAULT = Bounds()
