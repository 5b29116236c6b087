"""A real manager (python -m avatar_manager: supervisor + gunicorn) in a subprocess, for tests."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from bench.common import manager_ports

ROOT = Path(__file__).resolve().parent.parent
WORKER_MODULES = ("tests.fake_worker", "lipsync_worker")


def wait_for(check, timeout: float = 20.0, what: str = "a condition"):
    """Poll check() until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def make_avatar(data_dir: Path, name: str, source: Path | None = None, **config) -> Path:
    """avatars/NAME: a copy of a prepared avatar folder (for the real worker), or only a
    config.json (enough for the fake worker), with `config` merged into config.json."""
    folder = data_dir / "avatars" / name
    if source is not None:
        shutil.copytree(source, folder)
    else:
        folder.mkdir(parents=True)
    config_file = folder / "config.json"
    current = json.loads(config_file.read_text()) if config_file.exists() else {}
    config_file.write_text(json.dumps({**current, **config}))
    return folder


class Manager:
    """The manager as a process tree; stop() sends SIGTERM and checks every process is gone."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.data_dir = tmp / "data"
        self.log_dir = tmp / "logs"
        self.data_dir.mkdir(exist_ok=True)
        self.max_avatars = int(env.get("MAX_AVATARS", 4))
        # TTS servers on ports of their own too, so that managers never share one by accident.
        self.env = {**os.environ, **manager_ports(self.max_avatars), "AVATAR_DATA_DIR": str(self.data_dir),
                    "LOG_DIR": str(self.log_dir), "MAX_AVATARS": str(self.max_avatars), "STARTUP_TIMEOUT": "20",
                    "STOP_TIMEOUT": "3", **env}
        self.port = int(self.env["AVATAR_MANAGER_PORT"])
        self.base_port = int(self.env["AVATAR_BASE_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = tmp / f"manager-{self.port}.out"
        self.proc: subprocess.Popen | None = None
        self.headers: dict[str, str] = {}

    def start(self, timeout: float = 30) -> "Manager":
        self._out = open(self.output, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "avatar_manager"], cwd=ROOT, env=self.env,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"manager exited with {self.proc.returncode}:\n{self.output.read_text()}")
            try:
                if requests.get(self.url + "/ready", headers=self.headers, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"manager not ready within {timeout} s:\n{self.output.read_text()}")

    def same_ports(self) -> dict[str, str]:
        """The port settings of this manager, for one started in its place."""
        return {k: v for k, v in self.env.items()
                if k.startswith("TTS_PORT_") or k in ("AVATAR_MANAGER_PORT", "AVATAR_BASE_PORT")}

    def info(self, key: str) -> dict | None:
        """GET /avatar/info/<key>: the instance, or None when there is none."""
        answer = self.get(f"/avatar/info/{key}")
        return answer.json()["data"] if answer.status_code == 200 else None

    def tts_port(self, model: str) -> int:
        return int(self.env[f"TTS_PORT_{model.upper()}"])

    def avatar(self, name: str, **config) -> Path:
        return make_avatar(self.data_dir, name, **config)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers, timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.headers, timeout=kw.pop("timeout", 60), **kw)

    def start_avatar(self, avatar_id: str, avatar_name: str | None = None) -> requests.Response:
        body = {"avatar_id": avatar_id}
        if avatar_name:
            body["avatar_name"] = avatar_name
        return self.post("/avatar/start", body)

    def tree(self) -> list[psutil.Process]:
        """The manager and every process below it, including workers in sessions of their own."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> dict[int, str]:
        """pid -> avatar of every worker process (real or fake) in the manager's tree."""
        found = {}
        for p in self.tree():
            try:
                argv = p.cmdline()
            except psutil.Error:
                continue
            names = [a.removeprefix("--avatar_id=") for a in argv if a.startswith("--avatar_id=")]
            if "-m" in argv and argv[argv.index("-m") + 1] in WORKER_MODULES and names:
                found[p.pid] = names[0]
        return found

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the whole tree to exit; returns the exit code."""
        if self.proc is None:
            return 0
        tree = self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for p in self.tree():
                    p.kill()
                self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(tree, timeout=5)
        for p in alive:
            p.kill()
        self._out.close()
        assert not alive, f"processes left after the manager stopped: {alive}"
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the manager's own process group (supervisor, gunicorn); workers live on."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
