"""The avatar at rest: never frozen. A video loops ping-pong; a still image breathes and blinks.

One frame per clock tick is computed once and shared by every session, so idle viewers cost
no rendering at all beyond this.
"""
from __future__ import annotations

import math
import random

import cv2
import numpy as np

from .avatars import Avatar, Regions

BLINK = (0.5, 0.9, 1.0, 0.75, 0.35)        # lid closure over five 40 ms frames


def pingpong(n: int, count: int) -> int:
    """0, 1, ..., count-1, count-2, ..., 1, 0, 1, ...: loops without a jump."""
    if count < 2:
        return 0
    period = 2 * (count - 1)
    i = n % period
    return i if i < count else period - i


class IdleAnimation:
    def __init__(self, avatar: Avatar, fps: int = 25, seed: int = 7) -> None:
        self.avatar = avatar
        self.fps = fps
        rng = random.Random(seed)
        # Blinks every 2.5-5.5 s, at irregular but repeatable times over a long loop.
        self._blinks, t = set(), 2.0
        self._loop = 60 * fps
        while t * fps < self._loop:
            self._blinks.add(int(t * fps))
            t += rng.uniform(2.5, 5.5)

    def frame(self, n: int) -> tuple[int, np.ndarray, Regions]:
        """The idle frame for tick n: (avatar frame index, BGR image, its regions)."""
        if self.avatar.is_video:
            index = pingpong(n, len(self.avatar.frames))
            return index, self.avatar.frames[index], self.avatar.regions[index]
        return 0, *self._still(n)

    def _still(self, n: int) -> tuple[np.ndarray, Regions]:
        image, regions = self.avatar.frames[0], self.avatar.regions[0]
        closure = self._closure(n % self._loop)
        if closure:
            image = image.copy()
            for eye in regions.eyes:
                close_eye(image, eye, closure)
        # A slow sway of a pixel or two and half a degree, like someone breathing.
        t = n / self.fps
        dx = 1.2 * math.sin(2 * math.pi * t / 4.1)
        dy = 0.8 * math.sin(2 * math.pi * t / 5.3 + 1.0)
        angle = 0.5 * math.sin(2 * math.pi * t / 6.7)
        x1, y1, x2, y2 = regions.face
        matrix = cv2.getRotationMatrix2D(((x1 + x2) / 2, y2), angle, 1.0)
        matrix[:, 2] += (dx, dy)
        h, w = image.shape[:2]
        moved = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        shift = (round(dx), round(dy))
        return moved, Regions(_shifted(regions.face, shift), _shifted(regions.mouth, shift),
                              [_shifted(e, shift) for e in regions.eyes])

    def _closure(self, n: int) -> float:
        for start in range(n - len(BLINK) + 1, n + 1):
            if start in self._blinks:
                return BLINK[n - start]
        return 0.0


def _shifted(box: tuple[int, int, int, int], by: tuple[int, int]) -> tuple[int, int, int, int]:
    return box[0] + by[0], box[1] + by[1], box[2] + by[0], box[3] + by[1]


def close_eye(image: np.ndarray, eye: tuple[int, int, int, int], closure: float) -> None:
    """Draw the upper lid over the eye, `closure` of the way down, with a soft edge and lashes."""
    x1, y1, x2, y2 = eye
    w, h = x2 - x1, y2 - y1
    top, bottom = y1 + round(0.3 * h), y1 + round(0.72 * h)
    left, right = x1 + round(0.1 * w), x2 - round(0.1 * w)
    if top < 3 or bottom - top < 2 or right - left < 2:
        return
    region = image[top:bottom, left:right].astype(np.float32)
    rh, rw = region.shape[:2]
    # The lid continues the skin just above it, column by column, a shade darker.
    lid = np.median(image[top - 3:top, left:right].astype(np.float32), axis=0)[None] * 0.94
    ys, xs = np.mgrid[0:rh, 0:rw].astype(np.float32)
    # The lid edge is an arc: lower in the middle of the eye than at its corners.
    arc = 1 - ((xs - rw / 2) / (rw / 2)) ** 2
    edge = closure * rh * (0.55 + 0.45 * arc)
    sides = np.clip(np.minimum(xs, rw - 1 - xs) / (0.15 * rw), 0, 1)
    cover = (np.clip(edge - ys + 0.5, 0, 1) * sides)[..., None]
    lashes = (np.exp(-((ys - edge) / 1.2) ** 2) * closure * sides)[..., None]
    out = (region * (1 - cover) + lid * cover) * (1 - 0.45 * lashes)
    image[top:bottom, left:right] = np.clip(out, 0, 255).astype(np.uint8)
