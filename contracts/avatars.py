"""An avatar folder's name rules, its config.json and its lock, without loading any pictures: the
worker prepares and loads avatars, the manager reads their configs for every start and deletes
them, and it must not pay for OpenCV."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Iterator

FORMAT = 1
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


def data_dir(env=os.environ) -> Path:
    """Where avatars live: $AVATAR_DATA_DIR, ./data by default."""
    return Path(env.get("AVATAR_DATA_DIR") or "data")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise AvatarError(f"avatar name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def avatar_dir(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "avatars" / check_name(name)


def prepare_command(name: str) -> str:
    """The command an operator runs to make (or remake) avatar `name`'s folder."""
    return f"python -m lipsync_worker prepare IMAGE_OR_VIDEO --avatar_id {name}"


def is_livetalking(path: Path) -> bool:
    return (path / "full_imgs").is_dir() and (path / "coords.pkl").is_file()


def read_config(data_dir: Path, name: str) -> dict:
    """config.json merged over the defaults. A LiveTalking MuseTalk folder may have none."""
    path = avatar_dir(data_dir, name)
    if not path.is_dir():
        raise NoSuchAvatar(f"no avatar {name!r}: {path} does not exist; make it with '{prepare_command(name)}'")
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


@contextlib.contextmanager
def avatar_lock(data_dir: Path, name: str) -> Iterator[None]:
    """Held while avatars/NAME is swapped or deleted; any process changing that folder takes it.
    The lock file stays: removing it would let a waiting process lock a file nobody else sees."""
    folder = avatar_dir(data_dir, name).parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases it
