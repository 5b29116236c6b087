"""The API process (gunicorn) as the host agent's child (the `all` role): kept running, restarted
when it dies."""
from __future__ import annotations

import logging
import subprocess
import time

from . import procs
from .logs import pump

log = logging.getLogger("avatar_manager.api_server")
FAILS_AT_ONCE = 5.0  # seconds: an API process that dies this soon cannot start at all


class ApiServer:
    def __init__(self, argv: list[str], url: str) -> None:
        self.argv = argv
        self.url = url
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def keep_running(self) -> None:
        """Start it, or start it again after it died; SystemExit when it dies at once (a port in
        use, a bad config): stop rather than spin."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            if time.monotonic() - self.started < FAILS_AT_ONCE:
                raise SystemExit(f"the API server {procs.how_it_ended(self.proc)} at start; see the lines above")
            log.error("the API server %s; starting it again", procs.how_it_ended(self.proc))
        env = procs.child_env(keep=("API_TOKEN", "REDIS_URL"))
        self.proc = subprocess.Popen(self.argv, cwd=procs.ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pump(self.proc.stdout, "api")
        self.started = time.monotonic()

    def answers(self) -> bool:
        return procs.get_json(self.url + "/health", timeout=0.5) is not None

    def pids(self) -> set[int]:
        return {self.proc.pid} if self.proc is not None else set()

    def stop(self, grace: float) -> None:
        if self.proc is not None:
            procs.kill_tree(self.proc, grace, leader=False)
