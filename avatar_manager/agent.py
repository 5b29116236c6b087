"""The host agent: the one long-lived owner of every child process on this host.

Like gunicorn's arbiter: signal handlers only enqueue; one loop does the work. Each tick it keeps
the API process up (when it runs one), takes in what the steps reported, holds this host's
lease and publishes the host (hosts.py), and lets each of its parts take its next steps: the TTS
and ASR servers (model_servers.py) and the instances' lifecycle (supervisor.py) of this host,
and, while it holds the fleet's lease, the fleet-wide duties: registration jobs and placing a
lost host's instances again (replacement.py). A SIGCHLD wakes it at once; every child is reaped.

With `fencing` (the agent role, on a fleet of several hosts), an agent that cannot renew its
host's lease stops its own workers before the lease runs out, and its workers end themselves
when it stops renewing for any reason (stopped, dead): another host runs their avatars then.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

import psutil

from . import hosts, relayed_sessions, replacement, systemd
from .api_server import ApiServer
from .lease import FLEET, TTL, Lease, holder_id, host_lease
from .model_servers import ASR, TTS, Kind, ModelServers
from .registration_jobs import RegistrationJobs
from .settings import Settings
from .steps import Steps
from .store.base import Store, StoreError
from .supervisor import Supervisor
from .workers import Fence

log = logging.getLogger("avatar_manager.agent")

TICK = 0.1              # seconds between looks at the store
PR_SET_CHILD_SUBREAPER = 36
# Workers end themselves this long after the agent's last renewal: before the host's lease
# (hosts.TTL) runs out and another host may start their avatars.
FENCE_AFTER = TTL - 1.5
PLACE_LOST_EVERY = 0.5
FORGET_SESSIONS_EVERY = 5.0  # relayed sessions of instances that are gone


class HostAgent:
    def __init__(self, settings: Settings, store: Store, api_argv: list[str] | None, fencing: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.signals: list[int] = []
        self.child_exited = False              # a SIGCHLD came: there may be strays to reap
        self.wakeup = threading.Event()
        holder = holder_id()
        self.host_lease = Lease(store, host_lease(settings.host_id), holder)
        self.fleet_lease = Lease(store, FLEET, holder)
        self.api = ApiServer(api_argv, settings.api_url) if api_argv else None
        self.fence = Fence(settings.data_dir / f"host-{settings.host_id}.alive", FENCE_AFTER) if fencing else None
        self.renewed = time.monotonic()        # the last renewal of the host's lease that the store took
        self.next_publish = 0.0
        self.next_place_lost = 0.0
        self.next_forget = 0.0
        self.ready_told = False
        self.adopted = False                   # the workers and model servers already running are ours
        self.steps = Steps(max(4, settings.max_avatars), self.wakeup.set)
        tts, asr = self._model_servers(TTS, settings.tts_ports), self._model_servers(ASR, settings.asr_ports)
        self.model_servers = (tts, asr)
        self.supervisor = Supervisor(settings, store, self.steps, tts, asr, self.shutting_down, self.fence)
        # Registrations run apart: an upload never delays a start or a stop.
        self.registrations = RegistrationJobs(settings, store, self.shutting_down, self.wakeup.set)

    def _model_servers(self, kind: Kind, ports: dict[str, int]) -> ModelServers:
        s = self.settings
        return ModelServers(kind, ports, str(s.data_dir), s.log_dir, s.startup_timeout, s.stop_timeout, s.api_token,
                            self.steps, self.shutting_down)

    def shutting_down(self) -> bool:
        return bool(self.signals)

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._enqueue_signal)
        # A child's exit wakes the loop at once, which then collects it (waitpid) and acts.
        signal.signal(signal.SIGCHLD, self._enqueue_child_exit)
        self._become_subreaper()
        log.info("host agent for host %s starting (%s)", self.settings.host_id, self.host_lease.holder)
        try:
            while not self.signals:
                try:
                    self.tick()
                except StoreError as exc:
                    log.error("store unavailable: %s", exc)
                self._fence_if_cut_off()
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
        if self.api is not None:
            self.api.keep_running()
        self.steps.drain()
        if self.child_exited:  # not every tick: listing our children reads /proc
            self.child_exited = False
            self._reap_strays()
        if not self._hold_host(now):
            self.adopted = False
            return
        if not self.adopted:  # again after a store error cut it short
            log.info("host agent of %s supervises it; adopting live workers", self.settings.host_id)
            for servers in self.model_servers:
                servers.adopt()
            self.supervisor.adopt(now)
            self.adopted = True
        if not self.ready_told and (self.api is None or self.api.answers()):
            systemd.notify("READY=1")  # systemd's Type=notify: the service is up
            self.ready_told = True
            log.info("ready: host %s supervised%s", self.settings.host_id,
                     f"; the API and the web console at {self.settings.api_url}/" if self.api else "")
        for servers in self.model_servers:
            servers.tick(now)
        self.supervisor.tick(now)
        self.registrations.collect()
        if self.fleet_lease.hold():
            if now >= self.next_place_lost:
                self.next_place_lost = now + PLACE_LOST_EVERY
                replacement.place_lost(self.store, self.settings, several_hosts=self.fence is not None)
            if now >= self.next_forget:
                self.next_forget = now + FORGET_SESSIONS_EVERY
                relayed_sessions.forget_stale(self.store, self.store.list())
            self.registrations.tick(now)

    def _hold_host(self, now: float) -> bool:
        """Renew this host's lease and, every second, publish what it offers (its free worker
        ports, its GPUs' free memory); then touch the fence file its workers watch."""
        wall, renewing = time.time(), time.monotonic()  # the lease runs from before the store took it
        if not self.host_lease.hold():
            if now >= self.next_publish:  # said once a second, not every tick
                self.next_publish = now + hosts.RENEW_EVERY
                log.error("host %s is supervised by %s: is HOST_ID the same on two machines?",
                          self.settings.host_id, self.store.lease_holder(self.host_lease.name))
            return False
        self.renewed = renewing
        if self.fence is not None:
            # The workers compare this with their own clock: set it from ours, whatever the
            # file system's (a shared data dir's server keeps another).
            self.fence.path.touch()
            os.utime(self.fence.path, (wall, wall))
        if now >= self.next_publish:
            self.next_publish = now + hosts.RENEW_EVERY
            hosts.publish(self.store, hosts.measure(self.settings))
        return True

    def _fence_if_cut_off(self) -> None:
        """Cut off from the store for FENCE_AFTER: our workers end now, before another host may
        start their avatars (they would end themselves a moment later anyway)."""
        if self.fence is not None and time.monotonic() - self.renewed >= FENCE_AFTER:
            if stopped := self.supervisor.fence():
                log.error("fenced: the host's lease was not renewed for %.1f s; %d worker(s) stopped",
                          time.monotonic() - self.renewed, stopped)

    def _reap_strays(self) -> None:
        """Reap zombies re-parented to us (grandchildren of killed workers). Our own children are
        left to whoever owns them, which learns their exit status from it."""
        mine = self.supervisor.pids() | self.registrations.pids()
        for servers in self.model_servers:
            mine |= servers.pids()
        if self.api is not None:
            mine |= self.api.pids()
        for child in psutil.Process().children():
            try:
                # A child spawned a moment ago is not in `mine` until its step reports back; it
                # leads a session of its own (procs.spawn), which an orphaned grandchild does not.
                if (child.pid not in mine and child.status() == psutil.STATUS_ZOMBIE
                        and os.getsid(child.pid) != child.pid):
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError, ProcessLookupError):
                pass

    def shutdown(self) -> None:
        """Stop every worker and model server this agent owns, then the API, then let go of the leases."""
        systemd.notify("STOPPING=1")
        self.steps.shutdown()
        self.registrations.shutdown()
        try:
            stopped = self.supervisor.shutdown(self.host_lease.held)
        except StoreError as exc:
            log.error("cannot clear this host's instances from the store: %s", exc)
            stopped = 0
        for servers in self.model_servers:
            servers.stop_all()
        if self.api is not None:
            self.api.stop(self.settings.stop_timeout)
        for lease in (self.fleet_lease, self.host_lease):
            try:
                lease.release()
            except StoreError as exc:  # it expires on its own within its TTL
                log.warning("cannot give up the %s lease: %s", lease.name, exc)
        try:
            self.store.delete_doc(hosts.KIND, self.settings.host_id)
        except StoreError:
            pass  # it is lost by the others after its TTL
        log.info("host agent stopped; %d worker(s) stopped", stopped)
