"""Faces and eyes in a frame, found with OpenCV's Haar cascades: what avatar preparation
(avatars.py) and the quality checks (quality.py) both look with."""
from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x1, y1, x2, y2

MIN_SIDE = 64  # px: the smallest face the quality checks accept (quality.MIN_FACE_PX)

_FACES = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
_EYES = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")


def detect_faces(frame: np.ndarray, min_px: int | None = None) -> list[Box]:
    """Frontal faces at least `min_px` wide; by default 1/12 of the frame's shorter side, which
    skips specks in textures but also people far away."""
    gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    side = min_px or min(gray.shape) // 12
    found = _FACES.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]


def detect_eyes(frame: np.ndarray, face: Box) -> list[Box]:
    """The two largest eyes in the upper half of `face`, left to right."""
    x1, y1, x2, y2 = face
    upper = cv2.cvtColor(frame[y1:y1 + (y2 - y1) // 2, x1:x2], cv2.COLOR_BGR2GRAY)
    found = _EYES.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=5, minSize=((x2 - x1) // 8,) * 2)
    eyes = sorted(((x1 + int(x), y1 + int(y), x1 + int(x + w), y1 + int(y + h)) for x, y, w, h in found),
                  key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)[:2]
    return sorted(eyes)
