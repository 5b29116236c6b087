"""The API process (gunicorn) as the host agent's child: kept running, and systemd told that the
service is ready once it answers."""
from __future__ import annotations

import logging
import subprocess
import time

from . import procs, systemd
from .logs import pump

log = logging.getLogger("avatar_manager.api_server")
FAILS_AT_ONCE = 5.0  # seconds: an API process that dies this soon cannot start at all


class ApiServer:
    def __init__(self, argv: list[str], url: str) -> None:
        self.argv = argv
        self.url = url
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.ready_told = False

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

    def tell_ready(self) -> None:
        """READY=1 to systemd, once, when the API answers (called while we lead)."""
        if not self.ready_told and procs.get_json(self.url + "/health", timeout=0.5) is not None:
            systemd.notify("READY=1")
            self.ready_told = True
            log.info("ready: the API and the web console at %s/", self.url)

    def pids(self) -> set[int]:
        return {self.proc.pid} if self.proc is not None else set()

    def stop(self, grace: float) -> None:
        if self.proc is not None:
            procs.kill_tree(self.proc, grace, leader=False)
