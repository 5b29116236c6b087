"""Fencing: a worker of a fleet with several hosts ends itself when its host agent stops
renewing the host's lease, before the fleet places its avatar on another host, so that no avatar
ever runs twice (nor holds GPU memory twice).

The agent touches FENCE_FILE after every renewal it made in the store; a worker whose file is
older than FENCE_AFTER seconds (less than the lease's TTL) exits at once. This holds whatever
happened to the agent: cut off from the store, stopped (SIGSTOP), or dead.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from contracts.settings import ConfigError, number

log = logging.getLogger("lipsync_worker.fence")
FENCED_EXIT = 75     # EX_TEMPFAIL: the agent sees a worker that fenced itself
CHECK_EVERY = 0.25


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def watch(path: Path, after: float, end: Callable[[], None] | None = None) -> threading.Thread:
    """A daemon thread that calls end() (by default: exit now) once `path` is older than `after`."""
    def fenced() -> None:
        log.error("fenced: the host agent has not renewed its lease for %.1f s (%s); exiting so that the "
                  "fleet can run this avatar on another host", after, path)
        logging.shutdown()
        os._exit(FENCED_EXIT)

    def run() -> None:
        while _age(path) < after:
            time.sleep(CHECK_EVERY)
        (end or fenced)()

    thread = threading.Thread(target=run, name="fence", daemon=True)
    thread.start()
    return thread


def from_env(env: dict[str, str] | None = None) -> threading.Thread | None:
    """Watch FENCE_FILE for FENCE_AFTER seconds when the agent set them; None otherwise.
    ConfigError (a ValueError) for a malformed FENCE_AFTER."""
    env = os.environ if env is None else env
    path = env.get("FENCE_FILE")
    if not path:
        return None
    if not env.get("FENCE_AFTER"):
        raise ConfigError("FENCE_FILE is set without FENCE_AFTER (the host agent sets both)")
    return watch(Path(path), number(env, "FENCE_AFTER", 0.0, 0.5))
