"""Waiting on the processes tests and benchmarks start, and ending them for sure."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import psutil

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 20.0, what: str = "a condition") -> T:
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


def end(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, SIGKILL after `grace` seconds, and reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Services:
    """Servers a benchmark runs as processes of their own, each on a free port; stop() ends them all."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.running: list[subprocess.Popen] = []

    async def start(self, argv: list[str], env: dict | None = None, ready: str = "/health") -> str:
        """Run argv ("{port}" in it becomes a free port) until GET `ready` answers; its URL."""
        from .ports import free_port, wait_healthy

        port = free_port()
        self.running.append(subprocess.Popen([a.replace("{port}", str(port)) for a in argv], cwd=self.cwd,
                                             env={**os.environ, **(env or {})},
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, ready, timeout=60)
        return url

    def stop(self) -> None:
        for proc in self.running:
            end(proc)
