"""Registered avatars on every host (avatar_manager.avatar_sync): a real manager's API serves a
registered avatar's folder; a second host's data dir, pointed at it with FLEET_API_URL, downloads
it, checks its digest, keeps it, and replaces it when the avatar is registered again. A download
that does not match the registry, or a tar that reaches outside the folder, is refused and
changes nothing."""
from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import cv2
import pytest
import requests

from avatar_manager.avatar_sync import AvatarFetchError, ensure_local, folder_tar
from avatar_manager.settings import Settings
from avatar_manager.store.sqlite import SqliteStore
from conftest import ROOT
from contracts.avatars import DIGEST_FILE, AvatarError, folder_digest, seal, sealed_digest

PORTRAIT = ROOT / "assets" / "astronaut.png"
TOKEN = "sync-token"


def photo(flip: bool = False) -> bytes:
    image = cv2.imread(str(PORTRAIT))
    ok, data = cv2.imencode(".jpg", cv2.flip(image, 1) if flip else image)
    assert ok
    return data.tobytes()


def register(m, name: str, data: bytes) -> dict:
    answer = requests.post(m.url + "/avatar/register", headers=m.headers, timeout=120,
                           data={"avatar_name": name}, files={"file": ("photo.jpg", data)})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def host(tmp_path: Path, url: str | None, token: str | None = TOKEN) -> Settings:
    """The settings of another host: a data dir of its own, the API at `url`."""
    env = {"AVATAR_DATA_DIR": str(tmp_path / "host"), "LOG_DIR": str(tmp_path / "host-logs")}
    if url:
        env["FLEET_API_URL"] = url
    if token:
        env["API_TOKEN"] = token
    return Settings.from_env(env)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but the digest file) and its contents; folders as None."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.relative_to(folder).as_posix() != DIGEST_FILE}


def leftovers(settings: Settings, name: str) -> list[str]:
    """Hidden folders a download or a swap left beside the avatar's (its lock file may stay)."""
    return sorted(p.name for p in settings.avatars_dir.glob(f".{name}*") if p.suffix != ".lock")


@pytest.fixture
def api(manager):
    """A real manager behind API_TOKEN."""
    m = manager(start=False, WORKER_MODULE="tests.fake_worker", API_TOKEN=TOKEN)
    m.headers = {"Authorization": f"Bearer {TOKEN}"}
    return m.start()


def test_a_host_downloads_a_registered_avatar_once_and_again_when_it_is_registered_anew(api, tmp_path):
    m = api
    first = register(m, "astro", photo())
    registered = m.data_dir / "avatars" / "astro"
    assert first["digest"].startswith("sha256:")
    assert first["digest"] == folder_digest(registered) == sealed_digest(registered)
    assert [a["digest"] for a in m.get("/avatar/avatars").json()["data"]] == [first["digest"]]

    # The route is under the token like every other.
    url = f"{m.url}/avatar/astro/folder"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    served = m.get("/avatar/astro/folder")
    assert served.status_code == 200 and served.headers["Content-Type"] == "application/x-tar"
    assert served.headers["X-Avatar-Digest"] == first["digest"]
    assert int(served.headers["Content-Length"]) == len(served.content)
    with tarfile.open(fileobj=io.BytesIO(served.content)) as tar:
        names = tar.getnames()
    assert "config.json" in names and DIGEST_FILE not in names
    assert not any(n.startswith("/") or ".." in n.split("/") for n in names)

    store = SqliteStore(m.data_dir / "manager.sqlite3")  # the fleet's store, as every host sees it
    try:
        wrong = host(tmp_path, m.url, token="wrong")
        with pytest.raises(AvatarFetchError, match="401"):
            ensure_local(wrong, store, "astro")
        assert not (wrong.avatars_dir / "astro").exists() and leftovers(wrong, "astro") == []

        settings = host(tmp_path, m.url)
        local = settings.avatars_dir / "astro"
        assert ensure_local(settings, store, "astro") is True
        assert tree(local) == tree(registered)
        assert folder_digest(local) == sealed_digest(local) == first["digest"]
        kept, first_tree = (local.stat().st_ino, (local / "config.json").stat().st_mtime_ns), tree(local)

        assert ensure_local(settings, store, "astro") is False  # the cache: nothing downloaded
        assert (local.stat().st_ino, (local / "config.json").stat().st_mtime_ns) == kept

        assert requests.delete(m.url + "/avatar/astro", headers=m.headers, timeout=10).status_code == 200
        assert ensure_local(settings, store, "astro") is False  # not registered: left as it is
        assert tree(local) == first_tree and sealed_digest(local) == first["digest"]
        second = register(m, "astro", photo(flip=True))
        assert second["digest"] not in (None, first["digest"])

        assert ensure_local(settings, store, "astro") is True
        assert tree(local) == tree(registered) and folder_digest(local) == sealed_digest(local) == second["digest"]
        assert local.stat().st_ino != kept[0]
        assert ensure_local(settings, store, "astro") is False
        assert leftovers(settings, "astro") == []
    finally:
        store.close()


def test_the_folder_route_refuses_unknown_unregistered_and_bad_names(manager):
    m = manager(start=False, WORKER_MODULE="tests.fake_worker", API_TOKEN=TOKEN)
    m.headers = {"Authorization": f"Bearer {TOKEN}"}
    m.avatar("byhand")  # a folder put in place by hand: not registered, not distributed
    m.start()
    assert requests.get(m.url + "/avatar/byhand/folder", timeout=10).status_code == 401
    for name, status in (("nope", 404), ("byhand", 404), ("bad.name", 400), ("x" * 65, 400), ("a%20b", 400)):
        answer = m.get(f"/avatar/{name}/folder")
        assert answer.status_code == status, (name, answer.text)
        assert answer.json()["status"] == "error" and answer.json()["message"]
    operation = m.get("/openapi.json").json()["paths"]["/avatar/{name}/folder"]["get"]
    assert {"200", "400", "401", "404"} <= set(operation["responses"])
    ok = operation["responses"]["200"]
    assert "application/x-tar" in ok["content"] and "X-Avatar-Digest" in ok["headers"]


def test_the_command_line_registration_records_the_digest_too(tmp_path):
    env = {**os.environ, "AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs")}
    done = subprocess.run([sys.executable, "-m", "avatar_manager", "register", str(PORTRAIT), "--name", "cli"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "data" / "avatars" / "cli"
    assert json.loads(done.stdout)["digest"] == folder_digest(folder) == sealed_digest(folder)
    store = SqliteStore(tmp_path / "data" / "manager.sqlite3")
    try:
        assert store.get_doc("avatar", "cli")["digest"] == folder_digest(folder)
    finally:
        store.close()


# --- the digest --------------------------------------------------------------------------------------

def make_tree(folder: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


FILES = {"config.json": b'{"format": 1}', "frames/000000.png": b"png0", "frames/000001.png": b"png1"}


def test_the_digest_covers_every_path_and_byte_and_nothing_else(tmp_path):
    one = folder_digest(make_tree(tmp_path / "one", FILES))
    assert folder_digest(make_tree(tmp_path / "two", dict(reversed(FILES.items())))) == one  # any host, any order
    changes = {
        "a byte": {**FILES, "frames/000001.png": b"png2"},
        "a name": {**{k: v for k, v in FILES.items() if k != "frames/000001.png"}, "frames/000002.png": b"png1"},
        "a file more": {**FILES, "clips/wave/clip.json": b"{}"},
        "a file less": {k: v for k, v in FILES.items() if k != "config.json"},
        "a moved file": {**{k: v for k, v in FILES.items() if k != "config.json"}, "frames/config.json": FILES["config.json"]},
    }
    digests = {what: folder_digest(make_tree(tmp_path / what.replace(" ", "_"), files)) for what, files in changes.items()}
    assert one not in digests.values() and len(set(digests.values())) == len(digests)
    empty_folder = make_tree(tmp_path / "empty", FILES)
    (empty_folder / "clips").mkdir()
    assert folder_digest(empty_folder) != one
    # The digest file is not part of what it sums up; a link is refused, never followed.
    assert seal(tmp_path / "one") == one and folder_digest(tmp_path / "one") == one
    (tmp_path / "two" / "link").symlink_to("/etc/passwd")
    with pytest.raises(AvatarError, match="link"):
        folder_digest(tmp_path / "two")
    with pytest.raises(AvatarError, match="link"):
        folder_tar(tmp_path / "two")


def test_the_tar_holds_the_folder_and_nothing_else(tmp_path):
    folder = make_tree(tmp_path / "astro", FILES)
    seal(folder)
    length, pieces = folder_tar(folder)
    data = b"".join(pieces)
    assert len(data) == length
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    assert tree(tmp_path / "out") == tree(folder) and not (tmp_path / "out" / DIGEST_FILE).exists()
    assert folder_digest(tmp_path / "out") == folder_digest(folder)


# --- downloads that are refused: a tiny API of our own serving what it is told --------------------

class Upstream(http.server.ThreadingHTTPServer):
    """Answers every GET with `answer`: (status, headers, body); `cut`: bytes of the body not sent."""
    daemon_threads = True
    answer: tuple[int, dict, bytes] = (404, {}, b"")
    cut = 0
    served = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status, headers, body = self.server.answer
        self.server.served += 1
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[:len(body) - self.server.cut])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = Upstream(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def member(name: str, data: bytes = b"x", **attributes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    for key, value in attributes.items():
        setattr(info, key, value)
    return info, data


def folder_as_tar(folder: Path) -> bytes:
    return b"".join(folder_tar(folder)[1])


@pytest.fixture
def held(tmp_path, upstream):
    """(settings, store, folder, new digest): this host holds avatar astro sealed with the digest
    of FILES; the registry now says another folder (FILES with a frame more) is astro."""
    settings = host(tmp_path, f"http://127.0.0.1:{upstream.server_address[1]}")
    folder = make_tree(settings.avatars_dir / "astro", FILES)
    seal(folder)
    wanted = folder_digest(make_tree(tmp_path / "wanted", {**FILES, "frames/000002.png": b"png2"}))
    store = SqliteStore(tmp_path / "store.sqlite3")
    store.put_doc("avatar", "astro", {"name": "astro", "digest": wanted})
    yield settings, store, folder, wanted
    store.close()


def test_the_right_folder_from_our_own_upstream_is_installed(held, upstream, tmp_path):
    settings, store, folder, wanted = held  # the refusals below would pass for a download that never works
    upstream.answer = (200, {"X-Avatar-Digest": wanted}, folder_as_tar(tmp_path / "wanted"))
    assert ensure_local(settings, store, "astro") is True
    assert tree(folder) == tree(tmp_path / "wanted") and sealed_digest(folder) == wanted
    assert ensure_local(settings, store, "astro") is False and upstream.served == 1


@pytest.mark.parametrize("case, words", [
    ("tampered", "not the registered"),
    ("header", "registered again meanwhile"),
    ("parent", "not inside"),
    ("absolute", "not inside"),
    ("symlink", "not a file or a folder"),
    ("hardlink", "not a file or a folder"),
    ("device", "not a file or a folder"),
    ("twice", "cannot be written"),
    ("digest file", "not inside"),
    ("truncated", "broke off"),
    ("not a tar", "not a whole tar"),
    ("too large", "over the"),
    ("error", "500: the disk is on fire"),
    ("redirect", "302"),
])
def test_a_bad_download_is_refused_and_the_old_folder_stays(held, upstream, tmp_path, case, words):
    settings, store, folder, wanted = held
    before, inode = tree(folder), folder.stat().st_ino
    good = folder_as_tar(tmp_path / "wanted")
    tampered = make_tree(tmp_path / "tampered", {**FILES, "frames/000002.png": b"evil"})
    ok = {"X-Avatar-Digest": wanted}
    upstream.answer = {
        "tampered": (200, ok, folder_as_tar(tampered)),
        "header": (200, {"X-Avatar-Digest": "sha256:" + "0" * 64}, good),
        "parent": (200, ok, tar_of(member("config.json"), member("../escaped"))),
        "absolute": (200, ok, tar_of(member(str(tmp_path / "escaped")))),
        "symlink": (200, ok, tar_of(member("frames", type=tarfile.SYMTYPE, linkname=str(tmp_path)))),
        "hardlink": (200, ok, tar_of(member("config.json", type=tarfile.LNKTYPE, linkname="/etc/passwd"))),
        "device": (200, ok, tar_of(member("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3))),
        "twice": (200, ok, tar_of(member("config.json"), member("config.json"))),
        "digest file": (200, ok, tar_of(member(DIGEST_FILE, wanted.encode()))),
        "truncated": (200, ok, good),
        "not a tar": (200, ok, b"<html>a proxy's error page</html>" * 100),
        "too large": (200, ok, good),
        "error": (500, {"Content-Type": "application/json"},
                  json.dumps({"status": "error", "message": "the disk is on fire"}).encode()),
        "redirect": (302, {"Location": "http://127.0.0.1:9/elsewhere"}, b""),
    }[case]
    upstream.cut = len(good) // 2 if case == "truncated" else 0
    with pytest.raises(AvatarFetchError, match=words):
        ensure_local(settings, store, "astro", max_bytes=len(good) - 1 if case == "too large" else 2**30)
    assert tree(folder) == before and folder.stat().st_ino == inode and sealed_digest(folder) != wanted
    assert leftovers(settings, "astro") == []
    assert not (tmp_path / "escaped").exists() and not (settings.avatars_dir / "escaped").exists()


def test_nothing_is_downloaded_without_fleet_api_url_or_a_digest(tmp_path, upstream):
    store = SqliteStore(tmp_path / "store.sqlite3")
    try:
        store.put_doc("avatar", "astro", {"name": "astro", "digest": "sha256:" + "1" * 64})
        store.put_doc("avatar", "old", {"name": "old"})  # registered before digests
        alone = host(tmp_path, None)  # one host, or a shared data dir: folders are used as they are
        assert ensure_local(alone, store, "astro") is False and not (alone.avatars_dir / "astro").exists()
        fleet = host(tmp_path, f"http://127.0.0.1:{upstream.server_address[1]}")
        byhand = make_tree(fleet.avatars_dir / "byhand", FILES)
        assert ensure_local(fleet, store, "byhand") is False and ensure_local(fleet, store, "old") is False
        assert tree(byhand) == tree(make_tree(tmp_path / "same", FILES)) and upstream.served == 0
        with pytest.raises(AvatarError):
            ensure_local(fleet, store, "../etc")
    finally:
        store.close()
