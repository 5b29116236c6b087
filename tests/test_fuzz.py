"""Each service fuzzed by schemathesis from its own /openapi.json, as a real process over loopback.

Every documented operation gets a fixed number of generated requests (valid and invalid ones) with
a fixed seed, so a CI failure reproduces. A run fails on any 5xx, any status code or response body
the document does not describe, and any request that hangs. Afterwards each service must show
that the rejected requests changed nothing.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
import requests

from conftest import Server, asr_argv, tts_argv
from harness.avatars import make_avatar
from harness.processes import wait_for

CONFIG = Path(__file__).with_name("schemathesis.toml")  # seed, examples per operation, checks, timeouts
RUN_TIMEOUT_S = 150  # the whole run against one service
# The worker and the TTS and ASR servers run behind an API token, as the manager starts them when
# it has one: schemathesis sends it, and its ignored_auth check sends requests without it, which
# must be refused (401) wherever the document says the token applies.
TOKEN = "fuzz-token"
WITH_TOKEN = {"Authorization": f"Bearer {TOKEN}"}


def fuzz(url: str, workdir: Path, token: str | None = None) -> subprocess.CompletedProcess:
    """Run schemathesis against the service at `url` to its end (sending the API token, when the
    service has one); the tests check what the requests left behind before they look at its
    verdict (`assert_no_problems`)."""
    auth = ["--header", f"Authorization: Bearer {token}"] if token else []
    # In a folder of its own: schemathesis may write reports and caches where it runs.
    done = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
                           f"{url}/openapi.json", "--no-color", *auth],
                          cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert re.search(r"\b[1-9]\d* generated\b", done.stdout), done.stdout + done.stderr  # it sent requests
    assert "Authentication failed" not in done.stdout, done.stdout   # they got past the token
    return done


def assert_no_problems(run: subprocess.CompletedProcess) -> None:
    """No 5xx, no undocumented status, body or header, no hang (schemathesis exits 0)."""
    assert run.returncode == 0, f"schemathesis found problems:\n{(run.stdout + run.stderr)[-12000:]}"


# What aiohttp logs with a traceback after it answered 400 itself: malformed HTTP (schemathesis
# probes with a NUL byte in a header), or the rest of a body it cannot decode, read after the answer.
AIOHTTP_OWN_400 = re.compile(
    r"aiohttp\.(http_exceptions\.(BadHttpMessage|BadStatusLine)|web_protocol\.RequestPayloadError)")


def unexpected_tracebacks(log: str) -> list[str]:
    """The records of an aiohttp service's log with a traceback that is not aiohttp's own 400."""
    records = re.split(r"(?m)^(?=\d{4}-\d\d-\d\d )", log)  # each log record starts with its date
    return [record for record in records if "Traceback" in record and not AIOHTTP_OWN_400.search(record)]


def test_tts_server(spawn, tmp_path):
    server: Server = spawn(tts_argv("espeak"), env={"TTS_MAX_TEXT_CHARS": "300", "API_TOKEN": TOKEN})
    run = fuzz(server.url, tmp_path, TOKEN)
    # Nothing was left streaming, nothing failed unseen, and the voice still speaks.
    metrics = requests.get(server.url + "/metrics", headers=WITH_TOKEN, timeout=5).text
    assert 'tts_streams_active{model="espeak"} 0.0' in metrics
    assert unexpected_tracebacks(server.log.read_text()) == []
    assert requests.post(server.url + "/tts", json={"text": "Still here."}, headers=WITH_TOKEN,
                         timeout=10).status_code == 200
    assert_no_problems(run)


def test_asr_server(spawn, tmp_path):
    server: Server = spawn(asr_argv("sphinx"), env={"API_TOKEN": TOKEN})
    run = fuzz(server.url, tmp_path, TOKEN)
    # Nothing failed unseen, and it still recognises (a second of silence: an empty text).
    assert unexpected_tracebacks(server.log.read_text()) == []
    assert requests.post(server.url + "/transcribe", data=bytes(32000), timeout=10,
                         headers={**WITH_TOKEN, "Content-Type": "audio/L16"}).json()["seconds"] == 1
    assert_no_problems(run)


def test_worker(spawn, demo_source, tmp_path):
    data = tmp_path / "data"
    make_avatar(data, "demo", source=demo_source)
    server: Server = spawn([sys.executable, "-m", "lipsync_worker", "--transport", "webrtc", "--model", "puppet",
                            "--avatar_id", "demo", "--listenport", "{port}", "--instance_token", "fuzz",
                            "--max_session", "2"], env={"AVATAR_DATA_DIR": str(data), "API_TOKEN": TOKEN})
    run = fuzz(server.url, tmp_path, TOKEN)
    # Offers of random SDP are refused, so no session was opened, and the avatar is still served.
    health = requests.get(server.url + "/health", headers=WITH_TOKEN, timeout=5).json()
    assert health["sessions"] == 0 and health["avatar"] == "demo" and health["ready"] is True
    assert unexpected_tracebacks(server.log.read_text()) == []
    assert_no_problems(run)


def test_manager(fleet, tmp_path):
    manager = fleet()  # the real worker and the prepared demo avatar, nothing running
    instances = manager.get("/avatar/list").json()["data"]
    registry = manager.get("/avatar/avatars").json()["data"]
    folders = sorted(p.name for p in (manager.data_dir / "avatars").iterdir())
    assert instances == [] and folders == ["demo"]

    run = fuzz(manager.url, tmp_path)

    # The fuzzer's names do not exist, so every start, stop and deletion was refused and changed nothing.
    assert manager.get("/avatar/list").json()["data"] == instances
    assert manager.get("/avatar/avatars").json()["data"] == registry
    assert sorted(p.name for p in (manager.data_dir / "avatars").iterdir()) == folders
    uploads = manager.data_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []  # refused uploads leave nothing
    # Nor was a worker or a registration job left running.
    wait_for(lambda: not workers_under(manager), timeout=30, what="no worker left under the manager")
    assert manager.get("/ready").status_code == 200
    assert_no_problems(run)


def workers_under(manager) -> list[str]:
    """The command lines of the live workers and registration jobs in the manager's process tree."""
    found = []
    for process in manager.tree():
        try:
            command = " ".join(process.cmdline())
            alive = process.status() != psutil.STATUS_ZOMBIE
            if alive and re.search(r"lipsync_worker|avatar_manager register", command):
                found.append(command)
        except psutil.NoSuchProcess:
            pass
    return found
