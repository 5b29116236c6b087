"""Child processes: spawn one detached in its own session, probe its /health, kill its whole tree."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

import psutil

from contracts import auth

log = logging.getLogger("avatar_manager.procs")
ROOT = Path(__file__).resolve().parent.parent
LOG_ROTATE_BYTES = 10 * 1024 * 1024


def _rotate(path: Path) -> None:
    """Keep one previous log when a log outgrows LOG_ROTATE_BYTES; a child writes straight to
    its file, so it is rotated when the next child starts on it."""
    try:
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


# What no child needs: the manager's secrets, and systemd's socket (only we speak to systemd).
PRIVATE_ENV = ("API_TOKEN", "REDIS_URL", "NOTIFY_SOCKET")


def child_env(keep: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """Our environment for a child, without PRIVATE_ENV (except `keep`), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV or k in keep}
    env.update(extra)
    return env


def service_env(api_token: str | None, **extra: str) -> dict[str, str]:
    """child_env for a service that guards its routes with our API token (a worker, a model server):
    of PRIVATE_ENV it gets that token alone, handed over explicitly."""
    return child_env(**extra, **({auth.ENV: api_token} if api_token else {}))


def spawn(argv: list[str], env: dict[str, str], log_path: Path, stdin: Path | None = None,
          stdout: Path | None = None) -> subprocess.Popen:
    """Start argv (a list, never a shell string) in a new session, so its whole tree is one
    process group to signal, and so a terminal's Ctrl-C is delivered by us, not by the tty. Its
    output goes to log_path; with `stdout`, its stdout (an answer to read) goes to that file
    instead. It reads the file `stdin`, or nothing."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _rotate(log_path)
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(log_path, "ab"))
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        out.flush()
        source = files.enter_context(open(stdin, "rb")) if stdin is not None else subprocess.DEVNULL
        answer = files.enter_context(open(stdout, "wb")) if stdout is not None else out
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdin=source, stdout=answer,
                                stderr=out, start_new_session=True)


def get_json(url: str, timeout: float, headers: dict[str, str] | None = None) -> dict | None:
    """GET url -> its JSON object, or None on any failure."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            body = json.loads(response.read(64 * 1024))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return body if isinstance(body, dict) else None


def worker_health(url: str, token: str, api_token: str | None, timeout: float = 1.0) -> dict | None:
    """The worker's /health, if it names this instance's token (not merely a listener). With an
    API token set the worker names it only to a caller that sends that token."""
    body = get_json(f"{url}/health", timeout, auth.headers(api_token))
    return body if body is not None and body.get("instance_token") == token else None


def alive(proc: subprocess.Popen | psutil.Process) -> bool:
    """Still running (a child of ours that exited is reaped here)."""
    if isinstance(proc, subprocess.Popen):
        return proc.poll() is None
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def how_it_ended(proc: subprocess.Popen | subprocess.CompletedProcess | psutil.Process) -> str:
    """'exited with code 3', or 'was killed by SIGKILL (...)': a signal by its name, as people look
    it up. An adopted process is not our child: its status went to the supervisor before us."""
    code = proc.returncode if isinstance(proc, (subprocess.Popen, subprocess.CompletedProcess)) else None
    if code is None:
        return "ended (how is unknown: it was adopted, not started by this supervisor)"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = " (the kernel's out-of-memory killer sends SIGKILL: check dmesg)" if -code == signal.SIGKILL else ""
    return f"was killed by {name}{hint}"


def listeners() -> dict[int, psutil.Process]:
    """Local TCP port -> the process listening on it, where the OS lets us see."""
    found: dict[int, psutil.Process] = {}
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid and conn.laddr.port not in found:
                found[conn.laddr.port] = psutil.Process(conn.pid)
    except psutil.Error:
        pass
    return found


@dataclass(frozen=True)
class WorkerProcess:
    """A live worker of ours, as its command line and environment tell (what we spawned it with)."""
    proc: subprocess.Popen | psutil.Process
    avatar: str
    port: int
    token: str
    gpu: int | None      # -1: the CPU; None: CUDA_VISIBLE_DEVICES names no single GPU index
    started: float       # the process's start time

    @property
    def pid(self) -> int:
        return self.proc.pid


def _flag(argv: list[str], name: str) -> str | None:
    """The value of --name=VALUE (how workers.command writes flags) or --name VALUE."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.partition("=")[2]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _runs_module(argv: list[str], module: str) -> bool:
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1] == module


def describe_worker(proc: subprocess.Popen | psutil.Process, module: str, data_dir: Path,
                    ports: range, host_id: str) -> WorkerProcess | None:
    """The worker `proc` is, if it is one of ours: `python -m MODULE` listening on one of our
    ports, serving our data dir and spawned for our host (so another manager's workers on this
    machine are never ours; a worker from before hosts names none)."""
    try:
        process = psutil.Process(proc.pid)
        argv = process.cmdline()
        if not _runs_module(argv, module) or process.status() == psutil.STATUS_ZOMBIE:
            return None
        env = process.environ()
        started = process.create_time()
    except psutil.Error:
        return None
    avatar, port, token = _flag(argv, "avatar_id"), _flag(argv, "listenport"), env.get("INSTANCE_TOKEN")
    if (not avatar or not token or port is None or not port.isdigit() or int(port) not in ports
            or env.get("AVATAR_DATA_DIR") != str(data_dir) or env.get("HOST_ID", host_id) != host_id):
        return None
    devices = env.get("CUDA_VISIBLE_DEVICES", "")
    gpu = -1 if devices == "" else int(devices) if devices.isdigit() else None
    return WorkerProcess(proc=proc, avatar=avatar, port=int(port), token=token, gpu=gpu, started=started)


def find_workers(module: str, data_dir: Path, ports: range, host_id: str) -> list[WorkerProcess]:
    """Every live worker of ours on this host (a scan of every process: not every tick)."""
    found = []
    for process in psutil.process_iter():
        worker = describe_worker(process, module, data_dir, ports, host_id)
        if worker is not None:
            found.append(worker)
    return found


class Outcome(Enum):
    READY = "ready"
    EXITED = "exited"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"


def wait_ready(proc: subprocess.Popen, is_ready: Callable[[], bool], timeout: float,
               cancelled: Callable[[], bool] = lambda: False) -> Outcome:
    """Until a child we just spawned is ready, exits, runs out of time, or is no longer wanted."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            return Outcome.EXITED
        if is_ready():
            return Outcome.READY
        if time.monotonic() >= deadline:
            return Outcome.TIMED_OUT
        if cancelled():
            return Outcome.CANCELLED
        time.sleep(0.05)


def start_time(pid: int) -> float:
    """The process's start time (0.0 if it is gone): a pid plus this names one process for good."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def kill_tree(proc: subprocess.Popen | psutil.Process, grace: float, leader: bool = True) -> None:
    """SIGTERM to the process group (`leader`: proc leads one, as spawn() makes it) and every
    descendant, `grace` seconds to exit, SIGKILL to what is left; returns once all of them are
    gone (a child of ours is reaped)."""
    pid = proc.pid
    try:
        members = [psutil.Process(pid)]
        members += members[0].children(recursive=True)
    except psutil.NoSuchProcess:
        members = []
    # Descendants that left the group (setsid) are signalled one by one.
    group = pid if leader else None
    _signal_all(group, members, signal.SIGTERM)
    gone, alive = psutil.wait_procs(members, timeout=grace)
    if alive:
        log.warning("pid %d: %d process(es) still alive %.1f s after SIGTERM; sending SIGKILL",
                    pid, len(alive), grace)
        _signal_all(group, alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("pid %d did not exit after SIGKILL", pid)
    if leader:
        # Members of its group we could not list (it had exited already, so its children were
        # re-parented away from it) go too.
        kill_group(pid)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group; by default SIGKILL what is left of a dead session leader's group
    (the helpers it forked)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_all(group: int | None, members: list[psutil.Process], sig: int) -> None:
    if group is not None:
        kill_group(group, sig)
    for member in members:
        try:
            member.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
