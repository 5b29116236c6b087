"""Waiting on the processes tests and benchmarks start, and ending them for sure."""
from __future__ import annotations

import subprocess
import time
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
