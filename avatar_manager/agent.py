"""The host agent: the one long-lived owner of every child process on this host.

Like gunicorn's arbiter: signal handlers only enqueue; one loop does the work. Each tick it keeps
the API process up, holds (or waits for) the lease, takes in what the steps reported, and lets
each of its parts take its next steps: the TTS servers, the instances' lifecycle (supervisor.py)
and the registration jobs. A SIGCHLD wakes it at once; every child is reaped.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

import psutil

from . import systemd
from .api_server import ApiServer
from .lease import Lease
from .registration_jobs import RegistrationJobs
from .settings import Settings
from .steps import Steps
from .store.base import Store, StoreError
from .supervisor import Supervisor
from .tts import TtsServers, table

log = logging.getLogger("avatar_manager.agent")

TICK = 0.1              # seconds between looks at the store
PR_SET_CHILD_SUBREAPER = 36


class HostAgent:
    def __init__(self, settings: Settings, store: Store, api_argv: list[str]) -> None:
        self.settings = settings
        self.store = store
        self.signals: list[int] = []
        self.child_exited = False              # a SIGCHLD came: there may be strays to reap
        self.wakeup = threading.Event()
        self.lease = Lease(store)
        self.api = ApiServer(api_argv, settings.api_url)
        self.steps = Steps(max(4, settings.max_avatars), self.wakeup.set)
        self.tts = TtsServers(table(settings.tts_ports), str(settings.data_dir), settings.log_dir,
                              settings.startup_timeout, settings.stop_timeout, settings.api_token, self.steps,
                              self.shutting_down)
        self.supervisor = Supervisor(settings, store, self.steps, self.tts, self.shutting_down)
        # Registrations run apart: an upload never delays a start or a stop.
        self.registrations = RegistrationJobs(settings, store, self.shutting_down, self.wakeup.set)

    def shutting_down(self) -> bool:
        return bool(self.signals)

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._enqueue_signal)
        # A child's exit wakes the loop at once, which then collects it (waitpid) and acts.
        signal.signal(signal.SIGCHLD, self._enqueue_child_exit)
        self._become_subreaper()
        log.info("host agent %s starting", self.lease.holder)
        try:
            while not self.signals:
                try:
                    self.tick()
                except StoreError as exc:
                    log.error("store unavailable: %s", exc)
                self.wakeup.wait(TICK)
                self.wakeup.clear()
        finally:
            log.info("host agent stopping (signal %s)", self.signals[:1])
            self.shutdown()

    def _enqueue_signal(self, signum, frame) -> None:
        self.signals.append(signum)
        self.wakeup.set()

    def _enqueue_child_exit(self, signum, frame) -> None:
        self.child_exited = True
        self.wakeup.set()

    @staticmethod
    def _become_subreaper() -> None:
        """Orphaned grandchildren of a worker get re-parented to us, so we can reap them."""
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("cannot become a child subreaper; orphans go to init")

    def tick(self) -> None:
        now = time.time()
        self.api.keep_running()
        self.steps.drain()
        if self.child_exited:  # not every tick: listing our children reads /proc
            self.child_exited = False
            self._reap_strays()
        leading = self.lease.held
        if not self.lease.hold(now):
            return
        if not leading:
            log.info("host agent %s leads; adopting live workers", self.lease.holder)
            self.tts.adopt()
            self.supervisor.adopt(now)
        self.api.tell_ready()
        self.tts.tick(now)
        self.supervisor.tick(now)
        self.registrations.tick(now)

    def _reap_strays(self) -> None:
        """Reap zombies re-parented to us (grandchildren of killed workers). Our own children are
        left to whoever owns them, which learns their exit status from it."""
        mine = self.supervisor.pids() | self.tts.pids() | self.registrations.pids() | self.api.pids()
        for child in psutil.Process().children():
            try:
                if child.pid not in mine and child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError):
                pass

    def shutdown(self) -> None:
        """Stop every worker and TTS server this agent owns, then the API, then let go of the lease."""
        systemd.notify("STOPPING=1")
        self.steps.shutdown()
        self.registrations.shutdown()
        try:
            stopped = self.supervisor.shutdown(self.lease.held)
        except StoreError as exc:
            log.error("cannot clear the instances from the store: %s", exc)
            stopped = 0
        self.tts.stop_all()
        self.api.stop(self.settings.stop_timeout)
        try:
            self.lease.release()
        except StoreError as exc:  # it expires on its own within LEASE_TTL
            log.warning("cannot give up the supervisor lease: %s", exc)
        log.info("host agent stopped; %d worker(s) stopped", stopped)
