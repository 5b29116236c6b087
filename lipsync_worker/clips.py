"""Extra clips of an avatar (a wave, a nod, ...) that a session plays at rest: LiveTalking's
custom states, chosen with POST /set_audiotype.

$AVATAR_DATA_DIR/avatars/NAME/clips/TYPE/
  clip.json   {"format": 1, "frame_count", "size": [w, h], "source", "source_format", "created"}
  frames/     000000.png, ... at the avatar's frame size, 25 fps

TYPE follows the avatar name rules (letters, digits, '_' and '-'). LiveTalking numbers its
states, so an integer audiotype means the clip named by its digits (2 -> clips/2/); "idle", 0 and
1 (LiveTalking's speech and silence states) mean the avatar's own idle animation and cannot name
a clip. A clip loops ping-pong while its session is not speaking; speech is rendered on the
avatar's own frames as always. Clips are pictures only, and are read when the worker starts.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from contracts.avatars import FORMAT, NAME, AvatarError, avatar_dir, install_folder, read_config

from . import intake
from .animation import pingpong
from .avatars import CLIPS, frame_files, read_frames, write_frames

IDLE_TYPES = ("idle", "0", "1")
ASPECT_TOLERANCE = 0.02          # even-size cropping moves the aspect ratio a little


def check_clip_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise AvatarError(f"clip name {name!r} must be 1-64 letters, digits, '_' or '-'")
    if name in IDLE_TYPES:
        raise AvatarError(f"{name!r} is the avatar's own idle animation ({', '.join(IDLE_TYPES)} are "
                          f"reserved); name the clip otherwise, e.g. 'wave' or 2")
    return name


def frame_size(path: Path, config: dict) -> tuple[int, int]:
    """The avatar's frame size: config.json says it; a LiveTalking folder's first frame shows it."""
    if "size" in config:
        width, height = config["size"]
        return int(width), int(height)
    frames = frame_files(path / "full_imgs")
    image = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR) if frames else None
    if image is None:
        raise AvatarError(f"{path} has no readable frames; prepare the avatar again")
    return image.shape[1], image.shape[0]


def prepare_clip(source: Path, avatar_name: str, audiotype: str, data_dir: Path, *,
                 max_seconds: float = 10.0) -> Path:
    """Make avatars/NAME/clips/TYPE from a video (or a photo: a still pose), scaled to the
    avatar's frame size; atomic, and a refusal (AvatarError) writes nothing."""
    check_clip_name(audiotype)
    config = read_config(data_dir, avatar_name)
    path = avatar_dir(data_dir, avatar_name)
    width, height = frame_size(path, config)
    with tempfile.TemporaryDirectory(prefix="clip-intake-") as scratch:
        media = intake.identify(Path(source), Path(scratch))
        frames, _ = read_frames(media.path, max_seconds, max(width, height))
    got_h, got_w = frames[0].shape[:2]
    if abs(got_w / got_h - width / height) > ASPECT_TOLERANCE * width / height:
        raise AvatarError(f"the clip is {got_w}x{got_h} and the avatar {width}x{height}: a clip must have "
                          f"the avatar's aspect ratio (film it with the same framing)")
    frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) if f.shape[:2] != (height, width)
              else f for f in frames]
    meta = {"format": FORMAT, "kind": media.kind, "frame_count": len(frames), "size": [width, height],
            "source": Path(source).name, "source_format": media.format,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def write(staging: Path) -> None:
        write_frames(staging / "frames", frames)
        (staging / "clip.json").write_text(json.dumps(meta, indent=2))

    target = path / CLIPS / audiotype
    target.parent.mkdir(exist_ok=True)  # not parents: an avatar removed meanwhile is not made again
    install_folder(data_dir, avatar_name, target, write)
    return target


class ClipPlayer:
    """Which clip a session shows at rest, and where each clip it played stands: as in
    LiveTalking, going back to a clip resumes it unless reinit restarts it."""

    def __init__(self) -> None:
        self.name: str | None = None         # None: the avatar's own idle animation
        self._frames: list[np.ndarray] = []
        self._positions: dict[str, int] = {}

    def play(self, name: str, frames: list[np.ndarray], restart: bool) -> None:
        if restart:
            self._positions[name] = 0
        self.name, self._frames = name, frames

    def stop(self) -> None:
        self.name, self._frames = None, []

    def next_frame(self) -> np.ndarray | None:
        """This tick's clip frame, or None for the idle animation."""
        if self.name is None:
            return None
        n = self._positions.get(self.name, 0)
        self._positions[self.name] = n + 1
        return self._frames[pingpong(n, len(self._frames))]
