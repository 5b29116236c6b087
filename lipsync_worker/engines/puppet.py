"""puppet: moves the avatar's own mouth from the audio, on the CPU, without model weights.

Loudness sets how far the jaw drops; the phoneme, when the TTS gives one, sets the shape
(closed for m/b/p, rounded for o/u, spread for i/e). The lower lip and chin are warped down
by a smooth displacement field, the gap between the lips is filled with a shaded mouth
interior, and the result is feathered into the frame, so it stays the same face. Only the
mouth region is touched: a frame costs well under a millisecond.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .base import FrameJob, LipSyncEngine

# (how far the mouth may open, width factor) per class of IPA phoneme.
_CLOSED = (0.05, 1.0)
_SHAPES = {
    **dict.fromkeys("mbp", _CLOSED),
    **dict.fromkeys("fv", (0.2, 1.0)),
    **dict.fromkeys("uʊoɔwyøœɒ", (0.75, 0.8)),
    **dict.fromkeys("iɪeɛj", (0.55, 1.08)),
    **dict.fromkeys("aɑæʌɐ", (1.0, 1.0)),
    **dict.fromkeys("əɜ", (0.6, 1.0)),
}
_DEFAULT_SHAPE = (0.5, 1.0)
_NO_PHONEME = (1.0, 1.0)       # audio without phoneme timings: loudness alone drives the jaw
SILENCE_DB, LOUD_DB = -50.0, -18.0
INTERIOR = np.array([50, 40, 100], dtype=np.float32)  # BGR: the dark red of a mouth


def shape_of(phoneme: str | None) -> tuple[float, float]:
    if phoneme is None:
        return _NO_PHONEME
    core = phoneme.strip("ˈˌːˑ")
    return _SHAPES.get(core[:1], _DEFAULT_SHAPE) if core else _CLOSED


def loudness(audio: np.ndarray) -> float:
    """0 for silence .. 1 for loud speech, from the RMS level in dBFS."""
    if not len(audio):
        return 0.0
    rms = float(np.sqrt(np.mean(audio.astype(np.float32) ** 2))) / 32768.0
    db = 20 * np.log10(max(rms, 1e-6))
    return float(np.clip((db - SILENCE_DB) / (LOUD_DB - SILENCE_DB), 0.0, 1.0))


@dataclass
class MouthState:
    opening: float = 0.0   # smoothed 0..1
    width: float = 1.0


class PuppetEngine(LipSyncEngine):
    name = "puppet"

    def new_state(self) -> MouthState:
        return MouthState()

    def render(self, jobs: list[FrameJob]) -> list[np.ndarray]:
        return [self._render(job) for job in jobs]

    def _render(self, job: FrameJob) -> np.ndarray:
        state: MouthState = job.state
        scale, width = shape_of(job.phoneme)
        target = loudness(job.audio) * scale
        # Open fast, close a little slower: lips move like lips, not like a VU meter.
        state.opening = target if target > state.opening else 0.45 * state.opening + 0.55 * target
        state.width = 0.5 * state.width + 0.5 * (width if target > 0.05 else 1.0)
        frame = job.base.copy()
        if state.opening > 0.02:
            open_mouth(frame, job.regions.mouth, state.opening, state.width)
        return frame


def open_mouth(frame: np.ndarray, mouth: tuple[int, int, int, int], opening: float, width: float) -> None:
    """Warp the mouth region of `frame` in place: jaw down by `opening` (0..1), shape by `width`."""
    x1, y1, x2, y2 = mouth
    mw, mh = x2 - x1, y2 - y1
    # The region that moves: the mouth, some cheek either side, and the chin below.
    rx1, rx2 = max(0, x1 - mw // 4), min(frame.shape[1], x2 + mw // 4)
    ry1, ry2 = max(0, y1 - mh // 4), min(frame.shape[0], y2 + int(1.3 * mh))
    roi = frame[ry1:ry2, rx1:rx2].astype(np.float32)
    h, w = roi.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = (x1 + x2) / 2 - rx1
    split = _lip_line(frame, mouth) - ry1
    gap = opening * 0.42 * mh
    # Across the mouth the opening is lens-shaped: full at the centre, closed at the corners.
    across = np.clip(1 - ((xs - cx) / (0.5 * mw * width)) ** 2, 0, 1)
    # Below the lips the drop fades out towards the bottom of the chin.
    below = np.clip(1 - (ys - split) / max(1.0, h - split), 0, 1)
    drop = gap * np.sqrt(across)
    map_y = np.where(ys > split, ys - drop * below, ys)
    # Width: pull content towards (or push away from) the centre, strongest at the lips.
    near_lips = np.exp(-((ys - split) / (0.6 * mh)) ** 2)
    map_x = cx + (xs - cx) / (1 + (width - 1) * near_lips)
    warped = cv2.remap(roi, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    # The gap between the lips: darker towards the throat.
    in_gap = (ys > split) & (ys < split + drop)
    depth = np.clip((ys - split) / np.maximum(drop, 1), 0, 1)[..., None]
    interior = INTERIOR * (1.0 - 0.6 * np.sin(np.pi * depth))
    gap_mask = cv2.GaussianBlur(in_gap.astype(np.float32), (3, 3), 0)[..., None]
    warped = warped * (1 - gap_mask) + interior * gap_mask
    # Feather the edges of the region so no seam shows.
    feather = np.minimum.reduce([xs, w - 1 - xs, ys, h - 1 - ys]) / max(2.0, 0.15 * min(w, h))
    feather = np.clip(feather, 0, 1)[..., None]
    frame[ry1:ry2, rx1:rx2] = np.clip(warped * feather + roi * (1 - feather), 0, 255).astype(np.uint8)


def _lip_line(frame: np.ndarray, mouth: tuple[int, int, int, int]) -> int:
    """The darkest row across the middle of the mouth: where the lips meet."""
    x1, y1, x2, y2 = mouth
    mw, mh = x2 - x1, y2 - y1
    top = y1 + round(0.35 * mh)
    band = frame[top:y1 + round(0.7 * mh), x1 + mw // 4:x2 - mw // 4]
    if band.size == 0:
        return (y1 + y2) // 2
    rows = cv2.cvtColor(band, cv2.COLOR_BGR2GRAY).mean(axis=1)
    return top + int(np.argmin(rows))
