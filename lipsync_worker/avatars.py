"""Avatar folders: the format, preparation from an image or a video, and loading.

$AVATAR_DATA_DIR/avatars/NAME/
  config.json   {"format": 1, "kind": "image"|"video", "frame_count", "size": [w, h],
                 "source_format", "faces": {...}, "quality": {"verdict", "reasons", "metrics"},
                 "tts_model", "timbre", "avatar_model", "transport", "max_session", ...}
  frames/       000000.png, 000001.png, ... (25 fps for a video)
  regions.json  per frame: face, mouth, eyes boxes [x1, y1, x2, y2]
  clips/TYPE/   optional extra clips a session plays at rest (a wave, a nod: see clips.py):
                clip.json and frames/ at the avatar's frame size

A LiveTalking MuseTalk folder (full_imgs/, coords.pkl, ...) loads too.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from contracts.avatars import (DEFAULT_CONFIG, FORMAT, NAME, AvatarError, avatar_dir, install_folder,
                               is_livetalking, read_config)
from contracts.bounds import DEFAULT as DEFAULT_BOUNDS
from contracts.bounds import Bounds

from . import intake
from .bounds import check_picture, memory_limit, video_pixels_refusal
from .faces import MIN_SIDE, Box, detect_eyes, detect_faces
from .quality import Quality, assess, find_faces

FPS = 25
CLIPS = "clips"


@dataclass
class Regions:
    face: Box
    mouth: Box
    eyes: list[Box] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"face": list(self.face), "mouth": list(self.mouth), "eyes": [list(e) for e in self.eyes]}

    @classmethod
    def from_json(cls, data: dict) -> "Regions":
        return cls(tuple(data["face"]), tuple(data["mouth"]), [tuple(e) for e in data.get("eyes", [])])


@dataclass
class Avatar:
    name: str
    path: Path
    frames: list[np.ndarray]          # BGR uint8, all the same size
    regions: list[Regions]            # one per frame
    config: dict
    clips: dict[str, list[np.ndarray]] = field(default_factory=dict)   # by audiotype, at frames' size

    @property
    def is_video(self) -> bool:
        return len(self.frames) > 1

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.frames[0].shape[:2]
        return w, h


# --- preparation -------------------------------------------------------------------------------

def mouth_of(face: Box) -> Box:
    """Where the mouth lies in a frontal face box (Haar boxes run from brow to chin)."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    return (x1 + round(0.27 * w), y1 + round(0.68 * h), x1 + round(0.73 * w), y1 + round(0.92 * h))


def read_frames(source: Path, max_seconds: float, max_side: int,
                bounds: Bounds = DEFAULT_BOUNDS) -> tuple[list[np.ndarray], str]:
    """Frames of an image (one) or a video (sampled at 25 fps by their timestamps, cut to
    max_seconds), scaled down as they are read (ten seconds of 4K held at full size would take
    gigabytes). A source frame held for several 1/25 s is one array listed several times, so the
    decoding and memory it costs are those of the frames that really exist, whatever their timing
    (face detection then runs once per array; each 1/25 s is still written as a PNG of its own).
    TooCostly when a frame or the pixels decoded exceed `bounds` (metadata may have lied)."""
    bounds = replace(bounds, max_seconds=max_seconds)

    def fit(frame: np.ndarray) -> np.ndarray:
        check_picture(frame.shape[1], frame.shape[0], bounds, "a frame of the video")
        scale = max_side / max(frame.shape[:2])
        if scale < 1:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        h, w = frame.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise AvatarError(f"the picture is {w}x{h} px: too small to hold a face (at least {MIN_SIDE} px a side)")
        # Even sizes: video encoders want them.
        return np.ascontiguousarray(frame[:h - h % 2, :w - w % 2])

    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is not None:
        return [fit(image)], "image"
    frames = _sample(source, max_seconds, fit, bounds)
    if any(f.shape != frames[0].shape for f in frames):
        raise AvatarError("the video's frames change size; send a video of one size throughout")
    return frames, "video"


def _sample(source: Path, max_seconds: float, fit: Callable[[np.ndarray], np.ndarray],
            bounds: Bounds) -> list[np.ndarray]:
    """Output frame k shows the source frame on screen at k/25 s (the latest one shown by then)."""
    slots = round(max_seconds * FPS)
    frames: list[np.ndarray] = []
    shown: np.ndarray | None = None    # the latest source frame,
    fitted: np.ndarray | None = None   # and it scaled, once it fills a slot

    def hold(until: float) -> None:
        """The shown frame fills the slots before `until` seconds (1e-6: float error at a boundary)."""
        nonlocal fitted
        while shown is not None and len(frames) < min(FPS * until - 1e-6, slots):
            fitted = fitted if fitted is not None else fit(shown)
            frames.append(fitted)

    capture = cv2.VideoCapture(str(source))
    try:
        if not capture.isOpened():
            raise AvatarError(f"{source} is neither an image nor a video OpenCV can read")
        decoded, at, interval = 0, 0.0, 1 / FPS
        while len(frames) < slots:
            ok, frame = capture.read()
            if not ok:  # the last frame lasts as long as the one before it
                hold(at + interval)
                break
            now = min(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000, max_seconds)
            hold(now)
            if now >= max_seconds:
                break
            decoded += frame.shape[0] * frame.shape[1]
            if decoded > bounds.max_video_pixels:
                raise video_pixels_refusal(decoded, frame.shape[1], frame.shape[0], bounds)
            if shown is not None and now > at:
                interval = now - at
            shown, fitted, at = frame, None, now
    finally:
        capture.release()
    if not frames:
        raise AvatarError(f"{source} is neither an image nor a video OpenCV can read (no frames)")
    return frames


def find_regions(frames: list[np.ndarray], detected: list[list[Box]] | None = None) -> list[Regions]:
    """The largest face of each frame, boxes smoothed over time; frames without a face borrow.
    `detected`: each frame's faces (detect_faces, or quality.find_faces), when already known."""
    faces: list[Box | None] = []
    for found in detected if detected is not None else map(detect_faces, frames):
        faces.append(max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if found else None)
    known = [i for i, f in enumerate(faces) if f is not None]
    if not known:
        raise AvatarError("no face found: use a clear, frontal, well-lit photo or video of one person")
    boxes = np.array([faces[min(known, key=lambda k: abs(k - i))] for i in range(len(frames))], dtype=float)
    if len(frames) > 1:  # moving average over 5 frames, so the mouth does not jitter
        padded = np.pad(boxes, ((2, 2), (0, 0)), mode="edge")
        boxes = np.stack([padded[i:i + len(frames)] for i in range(5)]).mean(axis=0)
    regions = []
    for frame, box in zip(frames, boxes):
        face = tuple(int(round(v)) for v in box)
        regions.append(Regions(face, mouth_of(face), detect_eyes(frame, face)))
    return regions


@dataclass(frozen=True)
class Prepared:
    path: Path
    kind: str                 # "image" | "video"
    format: str               # what the upload was: jpeg, png, heic, mp4, ...
    frame_count: int
    size: tuple[int, int]
    faces: dict               # frames with no face, one, several; the median face box
    quality: Quality
    seconds: float            # how long preparing took


def prepare(source: Path, name: str, data_dir: Path, *, max_seconds: float = 10.0, max_side: int = 720,
            overrides: dict | None = None, workdir: Path | None = None,
            bounds: Bounds = DEFAULT_BOUNDS) -> Prepared:
    """Make avatars/NAME from a photo or a video, whatever its file name says; atomic: complete or
    absent. Refusals (intake.UnsupportedMedia, bounds.TooCostly, quality.QualityError,
    AvatarError) write nothing. `workdir` holds converted copies (HEIC, rotated photos); a
    temporary folder when None."""
    started = time.monotonic()
    target = avatar_dir(data_dir, name)
    bounds = replace(bounds, max_seconds=max_seconds)
    with contextlib.ExitStack() as stack:
        scratch = workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="avatar-intake-"))
        with memory_limit(bounds.memory_mb):  # decoding is where a small file turns into gigabytes
            media = intake.identify(Path(source), Path(scratch), bounds)
            frames, _ = read_frames(media.path, max_seconds, max_side, bounds)
    # A held source frame is listed once per slot it fills, as one array: detect its faces once.
    faces_of: dict[int, list[Box]] = {}
    for frame in frames:
        if id(frame) not in faces_of:
            faces_of[id(frame)] = find_faces(frame)
    detected = [faces_of[id(frame)] for frame in frames]
    verdict = assess(frames, detected)  # refusals raise here, before anything is written
    regions = find_regions(frames, detected)
    box = np.median([r.face for r in regions], axis=0).round().astype(int).tolist()
    faces = {**verdict.faces, "box": box}
    size = (frames[0].shape[1], frames[0].shape[0])
    config = {"format": FORMAT, "kind": media.kind, "frame_count": len(frames), "size": list(size),
              "source": Path(source).name, "source_format": media.format,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "faces": faces, "quality": verdict.to_json(), **DEFAULT_CONFIG, **(overrides or {})}
    _install(data_dir, name, frames, regions, config)
    return Prepared(target, media.kind, media.format, len(frames), size, faces, verdict,
                    time.monotonic() - started)


def _install(data_dir: Path, name: str, frames: list[np.ndarray], regions: list[Regions], config: dict) -> None:
    def write(staging: Path) -> None:
        write_frames(staging / "frames", frames)
        (staging / "regions.json").write_text(json.dumps([r.to_json() for r in regions]))
        (staging / "config.json").write_text(json.dumps(config, indent=2))

    install_folder(data_dir, name, avatar_dir(data_dir, name), write)


def write_frames(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir()
    for i, frame in enumerate(frames):
        # Light compression: several times faster to write, a little larger on disk.
        cv2.imwrite(str(folder / f"{i:06d}.png"), frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])


# --- loading -----------------------------------------------------------------------------------

class _BoxesUnpickler(pickle.Unpickler):
    """coords.pkl and mask_coords.pkl hold lists of int tuples, maybe numpy ints: allow those and
    nothing else (a pickle can run any code it names)."""

    ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "dtype"), ("builtins", "int"), ("builtins", "tuple"), ("builtins", "list")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which an avatar never needs")
        return super().find_class(module, name)


def read_pickle(path: Path) -> list:
    """A LiveTalking list of boxes, read without trusting it."""
    with open(path, "rb") as f:
        return _BoxesUnpickler(f).load()


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder, in order (000000.png or LiveTalking's 0.jpg, 1.jpg, ...)."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")),
                  key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))


def _read_frames(folder: Path) -> list[np.ndarray]:
    frames = []
    for path in frame_files(folder):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise AvatarError(f"{path} is not a readable image")
        frames.append(frame)
    if not frames:
        raise AvatarError(f"{folder} holds no frames")
    if any(f.shape != frames[0].shape for f in frames):
        raise AvatarError(f"frames in {folder} differ in size")
    return frames


def _load_livetalking(path: Path, name: str, config: dict) -> Avatar:
    frames = _read_frames(path / "full_imgs")
    try:
        coords = read_pickle(path / "coords.pkl")
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise AvatarError(f"{path / 'coords.pkl'} is not a list of face boxes: {exc}") from exc
    if len(coords) != len(frames):
        raise AvatarError(f"{path}: {len(coords)} boxes in coords.pkl for {len(frames)} frames")
    regions = []
    for box in coords:
        face = tuple(int(v) for v in box)
        regions.append(Regions(face, mouth_of(face)))
    return Avatar(name, path, frames, regions, config)


def load_clips(path: Path, size: tuple[int, int]) -> dict[str, list[np.ndarray]]:
    """The avatar folder's clips by audiotype; AvatarError for one that does not fit the avatar.
    Hidden folders are clips being written (contracts.avatars.install_folder)."""
    clips = {}
    folder = path / CLIPS
    for clip in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not (clip.is_dir() and NAME.fullmatch(clip.name)):
            continue
        frames = _read_frames(clip / "frames")
        height, width = frames[0].shape[:2]
        if (width, height) != size:
            raise AvatarError(f"{clip}: frames are {width}x{height}, the avatar's are {size[0]}x{size[1]}; "
                              f"prepare the clip again")
        clips[clip.name] = frames
    return clips


def load(data_dir: Path, name: str) -> Avatar:
    """Load and validate avatars/NAME; AvatarError says what is wrong with a broken folder."""
    avatar = _load(data_dir, name)
    avatar.clips = load_clips(avatar.path, avatar.size)
    return avatar


def _load(data_dir: Path, name: str) -> Avatar:
    config = read_config(data_dir, name)
    path = avatar_dir(data_dir, name)
    if is_livetalking(path):
        return _load_livetalking(path, name, config)
    try:
        regions = [Regions.from_json(r) for r in json.loads((path / "regions.json").read_text())]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AvatarError(f"avatar folder {path} is broken ({exc}); prepare it again") from exc
    if config.get("format") != FORMAT:
        raise AvatarError(f"{path}/config.json has format {config.get('format')!r}, expected {FORMAT}")
    frames = _read_frames(path / "frames")
    if len(frames) != len(regions):
        raise AvatarError(f"{path}: {len(regions)} regions for {len(frames)} frames; prepare it again")
    return Avatar(name, path, frames, regions, config)
