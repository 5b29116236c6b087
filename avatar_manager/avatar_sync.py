"""Registered avatars on every host: the API serves a registered avatar's folder as a tar
(folder_tar, GET /avatar/NAME/folder), and a host that has to run an avatar it does not hold, or
holds an older registration of, downloads it from FLEET_API_URL (ensure_local).

The registry record's digest (contracts.avatars.folder_digest, taken at registration) says which
folder is the registered one: what arrives is checked against it before it replaces anything, and
a folder sealed with that digest (its .digest file) is not downloaded again. Folders put in place
by hand have no record, hence no digest, and are never downloaded nor replaced. Without
FLEET_API_URL nothing is downloaded: one host, or hosts sharing one AVATAR_DATA_DIR, read the
folders in place.

The download is bounded (FETCH_TIMEOUT for all of it, READ_TIMEOUT for each read, MAX_FOLDER_BYTES)
and is installed as the worker installs a prepared folder: extracted into a hidden folder beside
the avatar's, checked, then renamed into place under the avatar's lock; a failure leaves the old
folder as it was and no part of the new one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Iterator

import requests
import urllib3

from contracts import auth
from contracts.avatars import (DIGEST_FILE, AvatarError, avatar_dir, check_name, folder_digest, folder_entries,
                               install_folder, sealed_digest)

from .settings import Settings
from .store.base import Store

log = logging.getLogger("avatar_manager.avatar_sync")

FETCH_TIMEOUT = 600.0             # seconds for a whole download: 2 GiB at ~30 Mbit/s
READ_TIMEOUT = 30.0               # seconds to connect, and for each read of the answer
MAX_FOLDER_BYTES = 2 * 1024 ** 3  # a prepared folder is 10 s of frames, at most a few hundred MB
MAX_ERROR_BYTES = 64 * 1024       # the API's error answer: one JSON line
CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE         # tar pads each header and each file's contents to 512 bytes
TAR_TYPE = "application/x-tar"
DIGEST_HEADER = "X-Avatar-Digest"


class AvatarFetchError(ValueError):
    """The avatar could not be downloaded, or what arrived was refused; the message says why.
    Nothing was changed: the host's folder (if any) is as it was."""


# --- the API's side ---------------------------------------------------------------------------------

def folder_tar(folder: Path) -> tuple[int, Iterator[bytes]]:
    """The folder as an uncompressed tar: its exact length, and its bytes in pieces, read as they
    are sent. Members are paths relative to the folder, files and folders only (folder_entries
    refuses anything else, links included), in folder_digest's order; DIGEST_FILE is not sent.
    AvatarError or OSError before the first byte when the folder cannot be read; a file that
    shrinks while it is sent ends the stream early (an error), so the client never takes a short
    file for a whole one."""
    planned = []
    for relative, info in folder_entries(folder):
        member = tarfile.TarInfo(relative)
        member.mtime = int(info.st_mtime)
        if stat.S_ISDIR(info.st_mode):
            member.type, member.mode = tarfile.DIRTYPE, 0o755
        else:
            member.size, member.mode = info.st_size, 0o644
        planned.append((member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), relative, member.size))
    length = sum(len(header) + _padded(size) for header, _, size in planned) + 2 * BLOCK

    def pieces() -> Iterator[bytes]:
        for header, relative, size in planned:
            yield header
            if not size:
                continue
            with open(os.open(Path(folder) / relative, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                left = size
                while left:
                    data = f.read(min(CHUNK, left))
                    if not data:
                        raise AvatarError(f"{Path(folder) / relative} shrank while it was sent")
                    left -= len(data)
                    yield data
            yield b"\0" * (_padded(size) - size)
        yield b"\0" * (2 * BLOCK)  # the end of the archive

    return length, pieces()


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


# --- a host's side ----------------------------------------------------------------------------------

def ensure_local(settings: Settings, store: Store, name: str, *, timeout: float = FETCH_TIMEOUT,
                 max_bytes: int = MAX_FOLDER_BYTES) -> bool:
    """Make avatars/NAME here the registered one: when its record has a digest, FLEET_API_URL is
    set and the folder here is missing or sealed with another digest, download it from the API,
    check it and swap it in. Returns whether it downloaded. Blocks for up to about `timeout` +
    READ_TIMEOUT seconds: call it from a step, not a loop that must keep turning.

    AvatarError (ValueError) for a bad name; AvatarFetchError (ValueError) when the download
    failed or was refused (unreachable, a 4xx/5xx, too large or too slow, a digest that does not
    match, a tar member that is not a plain file or folder inside it); StoreError when the store
    cannot be read. On any error the folder here is as it was."""
    check_name(name)
    record = store.get_doc("avatar", name)
    digest = (record or {}).get("digest")
    folder = avatar_dir(settings.data_dir, name)
    if not digest or not settings.fleet_api_url or sealed_digest(folder) == digest:
        return False
    started = time.monotonic()

    def fetch(staging: Path) -> None:
        _download(settings, name, digest, staging, timeout, max_bytes)
        try:
            arrived = folder_digest(staging)
        except (AvatarError, OSError) as exc:
            raise AvatarFetchError(f"avatar {name}: the downloaded folder cannot be read: {exc}") from None
        if arrived != digest:
            raise AvatarFetchError(
                f"avatar {name}: the folder {settings.fleet_api_url} sent has digest {arrived}, not the registered "
                f"{digest}: it changed after registration (e.g. a clip added) or the API's AVATAR_DATA_DIR is not "
                f"where it was registered; register the avatar again")
        (staging / DIGEST_FILE).write_text(digest)

    try:
        # Another process of this host may have installed the same meanwhile: then it stays.
        install_folder(settings.data_dir, name, folder, fetch, unless=lambda: sealed_digest(folder) == digest)
    except OSError as exc:
        raise AvatarFetchError(f"avatar {name}: cannot install the downloaded folder at {folder}: {exc}") from None
    log.info("avatar %s: downloaded from %s in %.1f s (%s)", name, settings.fleet_api_url,
             time.monotonic() - started, digest)
    return True


def _download(settings: Settings, name: str, digest: str, into: Path, timeout: float, max_bytes: int) -> None:
    """GET FLEET_API_URL/avatar/NAME/folder with the API token and extract it into `into`."""
    url = f"{settings.fleet_api_url}/avatar/{name}/folder"
    headers = auth.headers(settings.api_token)
    try:
        # No redirects: the token goes to FLEET_API_URL and nowhere else.
        with requests.get(url, headers=headers, stream=True, allow_redirects=False,
                          timeout=(READ_TIMEOUT, READ_TIMEOUT)) as response:
            if response.status_code != 200:
                raise AvatarFetchError(f"avatar {name}: GET {url} answered {response.status_code}: "
                                       f"{_message(response)}")
            sent = response.headers.get(DIGEST_HEADER)
            if sent != digest:  # registered again since the record was read: the caller tries again
                raise AvatarFetchError(f"avatar {name}: the API serves digest {sent!r}, the registry says "
                                       f"{digest!r}; it was registered again meanwhile, try again")
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise AvatarFetchError(f"avatar {name}: the folder is {int(length) / 2**20:.0f} MB, over the "
                                       f"{max_bytes / 2**20:.0f} MB a download may be")
            _extract(_Bounded(response.raw, name, time.monotonic() + timeout, timeout, max_bytes), into, name)
    except requests.RequestException as exc:  # no connection, no answer within READ_TIMEOUT
        raise AvatarFetchError(f"avatar {name}: downloading it from {url} failed: {exc}") from None


def _message(response: requests.Response) -> str:
    """What the API said (its JSON envelope's message), briefly."""
    body = response.raw.read(MAX_ERROR_BYTES, decode_content=True)
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace").strip() or response.reason or ""


class _Bounded:
    """The answer's body as a file for tarfile, cut off past max_bytes or past the deadline."""

    def __init__(self, raw, name: str, deadline: float, timeout: float, max_bytes: int) -> None:
        self.raw, self.name, self.deadline, self.timeout, self.max_bytes = raw, name, deadline, timeout, max_bytes
        self.count = 0

    def read(self, size: int = CHUNK) -> bytes:
        if time.monotonic() > self.deadline:
            raise AvatarFetchError(f"avatar {self.name}: the download took over {self.timeout:g} s")
        try:
            data = self.raw.read(size, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # cut short, or silent for READ_TIMEOUT
            raise AvatarFetchError(f"avatar {self.name}: the download broke off: {exc}") from None
        self.count += len(data)
        if self.count > self.max_bytes:
            raise AvatarFetchError(f"avatar {self.name}: the download is over the "
                                   f"{self.max_bytes / 2**20:.0f} MB it may be")
        return data


def _extract(stream: _Bounded, into: Path, name: str) -> None:
    """The tar's files and folders, written under `into` by hand rather than by tarfile's extract:
    a member that is anything else (a link, a device), names a path outside (absolute, '..') or
    comes twice is refused, and nothing is ever written but plain files and folders inside it."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if (path.is_absolute() or ".." in path.parts or not path.parts
                        or path.parts == (DIGEST_FILE,)):
                    raise AvatarFetchError(f"avatar {name}: the download holds {member.name!r}, a path that "
                                           "is not inside the avatar's folder")
                target = into.joinpath(*path.parts)
                if member.type == tarfile.DIRTYPE:
                    target.mkdir(parents=True, exist_ok=True)
                elif member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as source, open(target, "xb") as out:  # "x": never twice
                        shutil.copyfileobj(source, out, CHUNK)
                else:
                    raise AvatarFetchError(f"avatar {name}: the download holds {member.name!r}, which is not a "
                                           "file or a folder (a link or a device)")
    except tarfile.TarError as exc:
        raise AvatarFetchError(f"avatar {name}: the download is not a whole tar: {exc}") from None
    except OSError as exc:  # writing: a member over a file or folder of its own, a full disk
        raise AvatarFetchError(f"avatar {name}: the download cannot be written under {into}: {exc}") from None
