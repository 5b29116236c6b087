"""An avatar folder's name rules, its config.json, its lock and its digest, without loading any
pictures: the worker prepares and loads avatars, the manager reads their configs for every start,
deletes them and hands registered ones to other hosts, and it must not pay for OpenCV."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

FORMAT = 1
# The digest a folder had when it was installed (registered, or downloaded by another host), kept
# in it so that "is this still that avatar?" is one small read, not a pass over every frame. The
# worker never reads it, and folder_digest leaves it out.
DIGEST_FILE = ".digest"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_CONFIG = {
    "tts_model": "espeak",
    "timbre": "Default",
    "avatar_model": "puppet",
    "transport": "webrtc",
    "max_session": 8,
    "asr_model": "sphinx",   # what recognises the viewers' speech (contracts.asr_models)
    "language": "en",        # what they speak
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


# --- the digest: which registration a folder is, for hosts that fetch it (avatar_manager.avatar_sync)

def folder_entries(folder: Path) -> list[tuple[str, os.stat_result]]:
    """Every file and folder inside `folder` (at any depth) as (POSIX path relative to it, its
    lstat), sorted by path; DIGEST_FILE at the top is left out. AvatarError for anything else (a
    link, a device, a pipe): a prepared folder holds none, and following a link could reach
    outside the folder."""
    found: list[tuple[str, os.stat_result]] = []
    pending = [""]
    while pending:
        inside = pending.pop()
        with os.scandir(Path(folder) / inside) as entries:
            for entry in entries:
                relative = f"{inside}/{entry.name}" if inside else entry.name
                if relative == DIGEST_FILE:
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(relative)
                elif not stat.S_ISREG(info.st_mode):
                    raise AvatarError(f"{Path(folder) / relative} is neither a file nor a folder (a link?); an "
                                      "avatar folder holds only files and folders")
                found.append((relative, info))
    return sorted(found, key=lambda item: item[0])


def folder_digest(folder: Path) -> str:
    """sha256 over the folder's tree, 'sha256:HEX': each entry's relative path, in folder_entries'
    order, and each file's contents. Same tree, same digest, on any host; any renamed, added,
    removed or changed file or folder changes it. AvatarError as folder_entries; OSError when the
    folder cannot be read."""
    total = hashlib.sha256()
    for relative, info in folder_entries(folder):
        path = os.fsencode(relative)
        if stat.S_ISDIR(info.st_mode):
            total.update(b"d\0" + path + b"\0")
            continue
        # O_NOFOLLOW: a file swapped for a link since it was listed is refused, not followed.
        with open(os.open(Path(folder) / relative, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            content = hashlib.file_digest(f, "sha256").digest()
        total.update(b"f\0" + path + b"\0" + content)
    return f"sha256:{total.hexdigest()}"


def seal(folder: Path) -> str:
    """folder_digest, also written into the folder as DIGEST_FILE; the caller holds avatar_lock
    (nothing may change the folder between the two)."""
    digest = folder_digest(folder)
    (Path(folder) / DIGEST_FILE).write_text(digest)
    return digest


def sealed_digest(folder: Path) -> str | None:
    """The digest the folder was sealed with; None when it has none (made by hand, or before digests)."""
    try:
        return (Path(folder) / DIGEST_FILE).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def install_folder(data_dir: Path, name: str, target: Path, write: Callable[[Path], None],
                   unless: Callable[[], bool] = lambda: False) -> None:
    """Have write() fill a hidden folder beside `target` (avatars/NAME or a folder inside it),
    then swap it in under avatar NAME's lock: two writers of one folder never mix, the last to
    finish wins, and the folder is complete or absent. unless(), asked under the lock: the
    folder in place will do (another process installed the same meanwhile); nothing changes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old: Path | None = None
    try:
        write(staging)
        with avatar_lock(data_dir, name):
            if unless():
                return
            if target.exists():
                # Move the old one aside, then the new one in: the name is never missing for long.
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                os.rename(target, old / target.name)
            try:
                os.rename(staging, target)
            except BaseException:
                if old is not None:
                    os.rename(old / target.name, target)
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once installed
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
