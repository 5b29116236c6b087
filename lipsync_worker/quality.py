"""Is a picture good enough to become an avatar? Checked once, at registration, on the frames that
will be stored (already scaled), so the numbers mean what the engines will see.

Refusals (QualityError) are for pictures that cannot make a usable avatar: no face, more than
one, a face too small, or one so dark or blurred that no engine can help. Marginal
problems make the verdict "fair" and say why, so a person can decide to try a better picture.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import cv2
import numpy as np

from contracts.avatars import AvatarError

from .faces import MIN_SIDE, Box, detect_eyes, detect_faces

# Size, in stored frames (max_side 720 by default). Lipsync models redraw a 96-256 px face crop;
# under 64 px the mouth is under 30 px wide and every generated frame is a blurry upscale. A person
# at a normal distance in a landscape 720p video is ~70 px here, so the bar cannot be much higher.
MIN_FACE_PX = MIN_SIDE
# Under 8% of the frame width the face is a speck in a scene; under 15% it works but looks
# distant. The bundled portrait's face is 18% of its width.
MIN_FACE_FRACTION = 0.08
FAIR_FACE_FRACTION = 0.15
# A second face counts when at least half as wide as the main one: smaller ones are people far
# behind or Haar false positives in textures, and only the largest face is animated anyway.
SECOND_FACE_RATIO = 0.5
# Mean grey level (0-255) of the face. Under 25 an 8-bit face has ~25 levels left: brightened,
# it is banding and noise. The bundled portrait's face is ~157.
DARK_REFUSE = 25
DARK_FAIR = 60
# Share of the face at >= 250: burnt-out skin has no detail left to animate.
CLIPPED_FAIR = 0.25
# Variance of the Laplacian of the face crop scaled to 64x64 with its contrast set to a standard
# deviation of 64, so neither face size nor lighting moves it. On the bundled portrait: sharp
# ~1300, JPEG quality 8 ~1100, Gaussian blur of sigma 1% of the face width ~370, 1.6% ~180,
# 3% ~50, heavier ~30 (the floor: 8-bit steps).
SHARP_REFUSE = 60
SHARP_FAIR = 300
# Yaw, in rough degrees (see _yaw): synthetic turns of the portrait by 20, 40 and 50 degrees read
# ~7, ~22 and ~29. It never refuses: the estimate is rough, and a head turned past ~45 degrees is
# refused anyway, as "no face", because Haar's frontal detector no longer finds it.
YAW_FAIR = 15
# Videos, as shares of the frames. Frames without a face borrow the nearest face box: fine for a
# detector's blink, wrong when the person leaves the frame.
NO_FACE_REFUSE = 0.5
NO_FACE_FAIR = 0.1
SECOND_FACE_REFUSE = 0.1
# Frames of a video measured for size, light, sharpness and yaw, evenly spread; medians of them.
SAMPLES = 25

# detect_faces (Haar frontalface_default) finds the odd face in a curtain or a cloud. When it finds
# several, each must be found again by a second cascade trained apart (alt2) to count: that keeps
# a false one from refusing a one-person picture, or from being animated for being the largest.
# A lone face is taken as it is, so this check can only spare pictures, never refuse one.
_SECOND_OPINION = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")

NO_FACE = "no face found: use a clear, frontal, well-lit photo or video of one person"


class QualityError(AvatarError):
    """The picture cannot make an avatar; `reasons` say why, `metrics` what was measured."""

    def __init__(self, reasons: list[str], metrics: dict | None = None) -> None:
        self.reasons = reasons
        self.metrics = metrics or {}
        super().__init__("; ".join(reasons))


@dataclass
class Quality:
    verdict: Literal["good", "fair"]
    reasons: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def faces(self) -> dict:
        """How many frames had no face, one, or several (counted as in the checks)."""
        counts = self.metrics["faces_per_frame"]
        return {"frames": len(counts), "with_face": len(counts) - counts.count(0),
                "without_face": counts.count(0), "with_several": sum(c > 1 for c in counts)}

    def to_json(self) -> dict:
        return asdict(self)


def _width(box: Box) -> int:
    return box[2] - box[0]


def _confirmed(frame: np.ndarray, face: Box) -> bool:
    x1, y1, x2, y2 = face
    margin = (x2 - x1) // 2
    crop = frame[max(0, y1 - margin):y2 + margin, max(0, x1 - margin):x2 + margin]
    scale = 100 / (x2 - x1)  # the face ~100 px: cheap, and well above the cascade's 20 px window
    gray = cv2.equalizeHist(cv2.cvtColor(cv2.resize(crop, None, fx=scale, fy=scale), cv2.COLOR_BGR2GRAY))
    return len(_SECOND_OPINION.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(60, 60))) > 0


def find_faces(frame: np.ndarray) -> list[Box]:
    """detect_faces, less the false ones when it finds several (see _SECOND_OPINION)."""
    found = detect_faces(frame)
    if len(found) < 2:
        return found
    return [face for face in found if _confirmed(frame, face)] or found


def count_faces(found: list[Box]) -> int:
    """Faces that matter: the largest and those at least SECOND_FACE_RATIO as wide."""
    main = max(map(_width, found), default=0)
    return sum(_width(b) >= SECOND_FACE_RATIO * main for b in found)


def _percent(share: float) -> str:
    return f"{round(100 * share)}%"


def _too_small(width: float, frame_width: int) -> str:
    return (f"the face is too small ({round(width)} px, {_percent(width / frame_width)} of the frame width; "
            f"at least {MIN_FACE_PX} px and {_percent(MIN_FACE_FRACTION)} needed): move closer or crop the picture")


def _small_faces(frame: np.ndarray) -> list[int]:
    """Widths of faces down to 24 px, which detect_faces skips by default (under 1/12 of the
    frame): to tell a person far away from no person at all."""
    return [_width(face) for face in detect_faces(frame, min_px=24)]


def _sharpness(gray: np.ndarray) -> float:
    small = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    # Floor of 8 on the deviation: a flat crop must not read as sharp noise once stretched.
    small = (small - small.mean()) * (64 / max(float(small.std()), 8.0))
    return float(cv2.Laplacian(small, cv2.CV_32F).var())


def _yaw(frame: np.ndarray, face: Box) -> float | None:
    """Rough yaw in degrees, + when the face turns to the picture's right.

    The eyes' midpoint (the box centre without two eyes) against the edges of the skin at cheek
    height: on a head turned by t the face's centre line sits sin(t) of the half-width off the
    middle of the head's outline, and Haar's box follows the features, not the outline. Skin is
    the cheeks' chroma (Lab a, b, so shading does not matter) followed out from the centre. None
    when the skin runs past the search window (skin-coloured background, a grey picture) or ends
    within half the box (hair over a cheek); the caller skips dark and burnt faces, whose colour
    says nothing."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    lo, hi = max(0, x1 - w // 2), min(frame.shape[1], x2 + w // 2)
    lab = cv2.cvtColor(frame[y1 + int(0.35 * h):y1 + int(0.75 * h), lo:hi], cv2.COLOR_BGR2LAB).astype(np.float32)
    cheeks = lab[int(0.1 * h):int(0.3 * h), x1 - lo + int(0.35 * w):x1 - lo + int(0.65 * w)]
    ref = np.median(cheeks.reshape(-1, 3), axis=0)
    skin = (np.hypot(lab[..., 1] - ref[1], lab[..., 2] - ref[2]) < 12).mean(axis=0) > 0.5
    centre = (x1 + x2) // 2 - lo
    if not skin[centre]:
        return None
    left, right = centre, centre
    while left > 0 and skin[left - 1]:
        left -= 1
    while right < len(skin) - 1 and skin[right + 1]:
        right += 1
    if left == 0 or right == len(skin) - 1 or right - left < w // 2:  # unbounded, or cut by hair or glare
        return None
    eyes = detect_eyes(frame, face)
    middle = (sum(e[0] + e[2] for e in eyes) / 4 if len(eyes) == 2 else (x1 + x2) / 2) - lo
    offset = (middle - (left + right) / 2) / max((right - left) / 2, 1)
    return math.degrees(math.asin(max(-1.0, min(1.0, offset))))


def assess(frames: list[np.ndarray], faces: list[list[Box]] | None = None) -> Quality:
    """Check the frames (one for an image); `faces` are their find_faces, when already known.
    Raises QualityError for a refusal."""
    faces = faces if faces is not None else [find_faces(f) for f in frames]
    counts = [count_faces(found) for found in faces]
    n, frame_width = len(frames), frames[0].shape[1]
    metrics: dict = {"frames": n, "frames_with_face": n - counts.count(0), "faces_per_frame": counts}
    with_face = [i for i, c in enumerate(counts) if c]
    if not with_face:
        tiny = _small_faces(frames[n // 2])
        raise QualityError([_too_small(max(tiny), frame_width) if tiny else NO_FACE], metrics)
    if n == 1 and counts[0] > 1:
        raise QualityError([f"{counts[0]} faces found; an avatar needs exactly one"], metrics)
    refusals, fair = [], []
    missing, several = counts.count(0) / n, sum(c > 1 for c in counts) / n
    if missing > NO_FACE_REFUSE:
        refusals.append(f"no face in {_percent(missing)} of the frames: keep one face in view all along")
    elif missing > NO_FACE_FAIR:
        fair.append(f"the face is lost in {_percent(missing)} of the frames")
    if several >= SECOND_FACE_REFUSE:
        refusals.append(f"a second face appears in {_percent(several)} of the frames; an avatar needs exactly one")
    if refusals:
        raise QualityError(refusals, metrics)

    sample = with_face[::math.ceil(len(with_face) / SAMPLES)]
    widths, brightness, clipped, sharpness, yaws = [], [], [], [], []
    for i in sample:
        face = max(faces[i], key=_width)
        x1, y1, x2, y2 = face
        gray = cv2.cvtColor(frames[i][y1:y2, x1:x2], cv2.COLOR_BGR2GRAY).astype(np.float32)
        widths.append(_width(face))
        brightness.append(float(gray.mean()))
        clipped.append(float((gray >= 250).mean()))
        sharpness.append(_sharpness(gray))
        yaw = _yaw(frames[i], face) if brightness[-1] >= DARK_FAIR and clipped[-1] <= CLIPPED_FAIR else None
        if yaw is not None:
            yaws.append(yaw)
    width, light, burnt, sharp = (float(np.median(v)) for v in (widths, brightness, clipped, sharpness))
    yaw = float(np.median(yaws)) if yaws else None
    metrics.update(face_px=round(width), face_fraction=round(width / frame_width, 3), brightness=round(light, 1),
                   clipped=round(burnt, 3), sharpness=round(sharp, 1),
                   yaw_degrees=None if yaw is None else round(yaw, 1))

    if width < MIN_FACE_PX or width < MIN_FACE_FRACTION * frame_width:
        refusals.append(_too_small(width, frame_width))
    elif width < FAIR_FACE_FRACTION * frame_width:
        fair.append(f"the face fills only {_percent(width / frame_width)} of the frame width; a closer crop looks better")
    if light < DARK_REFUSE:
        refusals.append(f"the face is too dark (brightness {light:.0f} of 255): light it from the front")
    elif light < DARK_FAIR:
        fair.append(f"the face is dark (brightness {light:.0f} of 255); more light looks better")
    if burnt > CLIPPED_FAIR:
        fair.append(f"the face is overexposed ({_percent(burnt)} of it is pure white)")
    if sharp < SHARP_REFUSE:
        refusals.append(f"the face is too blurred (sharpness {sharp:.0f}, at least {SHARP_REFUSE}): hold still and focus")
    elif sharp < SHARP_FAIR:
        fair.append(f"the face is a little blurred (sharpness {sharp:.0f}); a sharper picture looks better")
    if yaw is not None and abs(yaw) >= YAW_FAIR:
        fair.append(f"the face is turned to the side (about {abs(yaw):.0f} degrees); a frontal view animates best")
    if refusals:
        raise QualityError(refusals, metrics)
    return Quality("fair" if fair else "good", fair, metrics)
