"""Fixtures that run real servers as subprocesses and always reap them."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from harness.avatars import prepare_portrait
from harness.manager import Manager
from harness.ports import free_port
from harness.processes import end
from harness.redis import start_redis

ROOT = Path(__file__).resolve().parent.parent


def tts_argv(model: str) -> list[str]:
    return [sys.executable, "-m", "tts_services", "--model", model, "--port", "{port}"]


def asr_argv(model: str) -> list[str]:
    return [sys.executable, "-m", "asr_services", "--model", model, "--port", "{port}"]


class Server:
    """A child process serving HTTP on a port ("{port}" in argv); stop() always reaps it."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None, port: int | None = None) -> None:
        port = port or free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )

    def wait_ready(self, path: str = "/health", timeout: float = 20.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if requests.get(self.url + path, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready within {timeout} s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log_file.close()


@pytest.fixture
def spawn(tmp_path):
    """spawn(argv, env=..., ready=True) -> Server; every server is stopped after the test."""
    servers: list[Server] = []

    def start(argv: list[str], env: dict | None = None, ready: bool = True, port: int | None = None) -> Server:
        server = Server(argv, tmp_path / f"server-{len(servers)}.log", env, port)
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def astro_data(tmp_path_factory):
    """A data directory with the bundled portrait prepared as avatar "astro"."""
    data = tmp_path_factory.mktemp("data")
    prepare_portrait(data, "astro")
    return data


@pytest.fixture
def puppet_worker(spawn, astro_data):
    """puppet_worker(*flags, **env) -> Server: a puppet lip-sync worker of "astro"."""
    def start(*flags: str, **env: str) -> Server:
        return spawn([sys.executable, "-m", "lipsync_worker", "--transport", "webrtc", "--model", "puppet",
                      "--avatar_id", "astro", "--listenport", "{port}", "--instance_token", "tok-123", *flags],
                     env={"AVATAR_DATA_DIR": str(astro_data), **env})
    return start


@pytest.fixture
def tts_server(spawn):
    """tts_server(model, **env) -> Server running `python -m tts_services`."""
    def start(model: str = "espeak", **env: str) -> Server:
        return spawn(tts_argv(model), env=env)
    return start


@pytest.fixture
def upstream(spawn):
    """upstream(kind, *flags) -> Server speaking GPT-SoVITS, CosyVoice, Coqui TTS or OpenAI's wire format."""
    def start(kind: str, *flags: str) -> Server:
        return spawn([sys.executable, str(ROOT / "tests" / "upstreams.py"), kind, "--port", "{port}", *flags],
                     ready=False).wait_ready("/last")
    return start


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server for the whole session; always terminated and reaped."""
    port = free_port()
    try:
        proc = start_redis(tmp_path_factory.mktemp("redis"), port)
    except RuntimeError as exc:
        pytest.fail(f"the Redis store tests need a redis-server: {exc}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        end(proc)


@pytest.fixture
def manager(tmp_path):
    """manager(**env) -> a started Manager; all of them are stopped, and checked to leave nothing."""
    started: list[Manager] = []

    def start(start: bool = True, **env: str) -> Manager:
        m = Manager(tmp_path, {k: str(v) for k, v in env.items()})
        started.append(m)
        return m.start() if start else m

    yield start
    problems = []
    for m in started:  # every one of them, even after one failed its check
        try:
            m.stop()
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, problems


@pytest.fixture
def fleet(manager, demo_source):
    """fleet(*more_avatars, **env) -> a started manager with the real worker and the prepared demo
    avatar (and copies of it under the other names)."""
    def start(*more_avatars: str, **env: str):
        m = manager(start=False, **env)
        if "API_TOKEN" in env:
            m.headers = {"Authorization": f"Bearer {env['API_TOKEN']}"}
        for name in ("demo", *more_avatars):
            m.avatar(name, source=demo_source)
        return m.start()
    return start


@pytest.fixture(params=["sqlite", "redis"])
def store_env(request) -> dict[str, str]:
    """The manager's environment for each store: SQLite (the default), then a flushed real Redis."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return {"REDIS_URL": url}


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory) -> Path:
    """The bundled portrait prepared once, with the real worker's own tool, as avatar `demo`;
    tests copy it (make_avatar(..., source=demo_source))."""
    return prepare_portrait(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """MODELS_DIR with small random models of MuseTalk's architecture, in the real layout."""
    from harness.musetalk import save_random  # torch: only for the tests that need it
    return save_random(tmp_path_factory.mktemp("models"))
