"""A real manager (python -m avatar_manager: supervisor + gunicorn) in a subprocess, with data and
log folders and free ports of its own, for tests and benchmarks alike."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Callable, Iterable

import psutil
import requests

from .avatars import make_avatar
from .ports import manager_ports

ROOT = Path(__file__).resolve().parent.parent
FAKE_NVML_DIR = ROOT / "tests" / "fake_nvml"
WORKER_MODULES = ("tests.fake_worker", "lipsync_worker")
# Tests want a small fleet that gives up and stops quickly; benchmarks measure the manager's own
# defaults (test_settings=False), of which MAX_AVATARS is needed here to reserve its ports.
TEST_SETTINGS = {"MAX_AVATARS": "4", "STARTUP_TIMEOUT": "20", "STOP_TIMEOUT": "3"}
DEFAULT_MAX_AVATARS = 10


class Manager:
    """The manager as a process tree; stop() sends SIGTERM and checks every process is gone.
    As a context manager: started on entry, stopped on exit."""

    def __init__(self, tmp: Path, env: dict[str, str], *, test_settings: bool = True) -> None:
        self.data_dir = tmp / "data"
        self.log_dir = tmp / "logs"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        settings = {**(TEST_SETTINGS if test_settings else {}), **env}
        self.max_avatars = int(settings.get("MAX_AVATARS", DEFAULT_MAX_AVATARS))
        # TTS and ASR servers on ports of their own too, so that managers never share one by accident.
        self.env = {**os.environ, **manager_ports(self.max_avatars), "AVATAR_DATA_DIR": str(self.data_dir),
                    "LOG_DIR": str(self.log_dir), **settings}
        self.port = int(self.env["AVATAR_MANAGER_PORT"])
        self.base_port = int(self.env["AVATAR_BASE_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = tmp / f"manager-{self.port}.out"
        self.proc: subprocess.Popen | None = None
        self.headers: dict[str, str] = {}
        self._seen: dict[int, psutil.Process] = {}

    def __enter__(self) -> "Manager":
        try:
            return self.start()
        except BaseException:
            self.stop()  # a manager that did not get ready may still be running
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> "Manager":
        with open(self.output, "ab") as out:  # the manager writes on through its own copy
            self.proc = subprocess.Popen([sys.executable, "-m", "avatar_manager"], cwd=ROOT, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
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

    def tail(self, lines: int = 30) -> str:
        """The last lines the manager wrote."""
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def same_ports(self) -> dict[str, str]:
        """The port settings of this manager, for one started in its place."""
        return {k: v for k, v in self.env.items()
                if k.startswith(("TTS_PORT_", "ASR_PORT_")) or k in ("AVATAR_MANAGER_PORT", "AVATAR_BASE_PORT")}

    def info(self, key: str) -> dict | None:
        """GET /avatar/info/<key>: the instance, or None when there is none."""
        answer = self.get(f"/avatar/info/{key}")
        return answer.json()["data"] if answer.status_code == 200 else None

    def tts_port(self, model: str) -> int:
        return int(self.env[f"TTS_PORT_{model.upper()}"])

    def asr_port(self, model: str) -> int:
        return int(self.env[f"ASR_PORT_{model.upper()}"])

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

    def stop_avatar(self, avatar_id: str) -> requests.Response:
        return self.post("/avatar/stop", {"avatar_id": avatar_id})

    def metrics(self) -> dict[str, float]:
        """GET /metrics: the samples without labels, by name."""
        return samples(checked(self.get("/metrics")).text)

    def tree(self) -> list[psutil.Process]:
        """The manager and every process below it, including workers in sessions of their own;
        none once the manager has exited (its pid may be another process's by then)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def remember_tree(self) -> None:
        """Note every process below the manager now (workers, TTS and ASR servers, gunicorn), so that
        stop() makes sure of them even if the manager dies first."""
        for p in self.tree():
            self._seen.setdefault(p.pid, p)

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
        """SIGTERM, wait for the whole tree to exit; returns the exit code. What outlives the
        manager is killed, and named in an AssertionError."""
        if self.proc is None:
            return 0
        self.remember_tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"manager pid {self.proc.pid} still running {timeout:g} s after SIGTERM; killing its tree",
                      file=sys.stderr)
                self.remember_tree()
                _kill(self._seen.values())
                self.proc.wait(timeout=10)
        # is_running() is False for a pid the system has given to another process since.
        _, alive = psutil.wait_procs([p for p in self._seen.values() if p.is_running()], timeout=10)
        _kill(alive)
        self._seen.clear()
        assert not alive, f"processes left after the manager stopped: {alive}"
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the manager's own process group (supervisor, gunicorn); workers live on."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _kill(procs: Iterable[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def checked(response: requests.Response) -> requests.Response:
    """The response when it is a 200; otherwise a RuntimeError naming the request and the answer
    (benchmarks stop at the first surprise; tests assert what they expect instead)."""
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.path_url}: "
                           f"{response.status_code} {response.text[:500]}")
    return response


def samples(metrics: str) -> dict[str, float]:
    """The samples without labels of a Prometheus text page (a manager's or a worker's /metrics), by name."""
    values = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def fake_nvml_env(world: dict | Path) -> dict[str, str]:
    """Environment in which a manager finds tests/fake_nvml/pynvml.py instead of nvidia-ml-py,
    reporting `world`, or the world in that file (the fake's docstring says what it may hold)."""
    path = os.pathsep.join(filter(None, [str(FAKE_NVML_DIR), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FAKE_NVML": str(world) if isinstance(world, Path) else json.dumps(world)}


def with_managers(run: Callable[[Namespace, Path, list[Manager]], None], args: Namespace, prefix: str) -> None:
    """run(args, tmp, managers) in a temporary folder; whatever happens (an error, Ctrl-C,
    SIGTERM), every manager it put in `managers` is stopped and the folder removed."""
    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, terminate)

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    managers: list[Manager] = []
    try:
        run(args, tmp, managers)
    except BaseException:
        for m in managers:
            if m.proc is not None:
                print(f"--- manager output ({m.output}):\n{m.tail()}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not skip the cleanup
        for m in managers:
            try:
                m.stop()
            except AssertionError as exc:
                print(exc, file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
