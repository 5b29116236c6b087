"""One record per supervised child, and the threads that run the steps that block.

The host agent's loop owns every Child: only the loop reads or changes one. A step that would
hold the loop up (spawning and waiting for readiness, killing a tree and waiting for its port, a
health check) runs in a thread and reports back: it hands the loop functions to call (`report`),
and the loop calls them between ticks. While a step runs for a child, the child is busy and no
other step starts for it.
"""
from __future__ import annotations

import logging
import queue
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import psutil

log = logging.getLogger("avatar_manager.steps")

Proc = subprocess.Popen | psutil.Process
Report = Callable[[Callable[[], None]], None]   # report(fn): the loop calls fn
BACKOFF_MAX = 30.0


def backoff_delay(failures: int) -> float:
    """Seconds before the next try after `failures` failures in a row: 0.5, 1, 2, ... 30."""
    return min(BACKOFF_MAX, 0.5 * 2 ** max(0, failures - 1))


@dataclass(eq=False)
class Child:
    """A supervised process: a worker (by avatar) or a TTS or ASR server (by model)."""
    name: str
    proc: Proc | None = None
    busy: bool = False        # a step runs for it
    misses: int = 0           # health checks missed in a row
    next_probe: float = 0.0   # when to check its health again
    failures: int = 0         # failed starts and exits in a row (a worker's are in its store record)
    retry_at: float = 0.0     # no start before this (a worker's is in its store record)
    fetched_for: str = ""     # a worker's: the instance (token) whose avatar folder is in place here


class Steps:
    def __init__(self, threads: int, wakeup: Callable[[], None]) -> None:
        self.threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="step")
        self.reports: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.wakeup = wakeup

    def run(self, child: Child, step: Callable[[Report], None]) -> None:
        """step(report) in a thread; the child is busy until it ends."""
        child.busy = True

        def done() -> None:
            child.busy = False

        def body() -> None:
            try:
                step(self._report)
            except Exception:
                log.exception("%s: %s failed", child.name, getattr(step, "__name__", "a step"))
            finally:
                self._report(done)
        self.threads.submit(body)

    def _report(self, fn: Callable[[], None]) -> None:
        self.reports.put(fn)
        self.wakeup()

    def drain(self) -> None:
        """Call, in the loop, what the steps reported, in order."""
        while True:
            try:
                fn = self.reports.get_nowait()
            except queue.Empty:
                return
            fn()

    def shutdown(self) -> None:
        """Wait for the running steps (queued ones are dropped), then take in their reports."""
        self.threads.shutdown(wait=True, cancel_futures=True)
        self.drain()
