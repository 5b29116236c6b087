"""An avatar's name rules and its config.json, without loading any pictures (the manager reads
these for every start, and must not pay for OpenCV)."""
from __future__ import annotations

import json
import re
from pathlib import Path

FORMAT = 1
ENGINES = ("puppet", "musetalk")   # what avatar_model may name (lipsync_worker.engines)
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_CONFIG = {
    "tts_model": "espeak",
    "timbre": "Default",
    "avatar_model": "puppet",
    "transport": "webrtc",
    "max_session": 8,
}


class AvatarError(ValueError):
    """The avatar cannot be prepared or loaded; the message says why and what to do."""


class NoSuchAvatar(AvatarError):
    """There is no folder for that name."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise AvatarError(f"avatar name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def avatar_dir(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "avatars" / check_name(name)


def is_livetalking(path: Path) -> bool:
    return (path / "full_imgs").is_dir() and (path / "coords.pkl").is_file()


def read_config(data_dir: Path, name: str) -> dict:
    """config.json merged over the defaults. A LiveTalking MuseTalk folder may have none."""
    path = avatar_dir(data_dir, name)
    if not path.is_dir():
        raise NoSuchAvatar(f"no avatar {name!r}: {path} does not exist; make it with "
                           f"'python -m lipsync_worker prepare IMAGE_OR_VIDEO --avatar_id {name}'")
    defaults = {**DEFAULT_CONFIG, "avatar_model": "musetalk"} if is_livetalking(path) else DEFAULT_CONFIG
    config_file = path / "config.json"
    if not config_file.exists() and is_livetalking(path):
        return dict(defaults)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AvatarError(f"avatar folder {path} is broken ({exc}); prepare it again") from exc
    if not isinstance(config, dict):
        raise AvatarError(f"{config_file} is not a JSON object; prepare it again")
    return {**defaults, **config}
