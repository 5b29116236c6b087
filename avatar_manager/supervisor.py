"""The lifecycle of this host's avatar instances, as supervisor's process.py has it: one Child
record per worker, one `step` with a branch for every state, one `finish` for every exit.

Request handlers only write wishes into the store (a STARTING record, a STOPPING state); the host
agent's loop (agent.py) calls `tick`, which carries them out. What blocks runs as a step in a
thread (steps.py) and reports back; only the loop changes a Child.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import psutil

from . import avatar_sync, ports, procs, reconcile, relayed_sessions
from .instances import HOLDS_PORT, Instance, State
from .logs import prune_instance_logs
from .metrics import start_observation
from .model_servers import ModelServers
from .settings import Settings
from .steps import Child, Proc, Report, Steps, backoff_delay
from .store.base import Store, StoreError
from .workers import Fence, avatar_spec, command, log_path

log = logging.getLogger("avatar_manager.supervisor")

MAX_FAILURES = 5        # crashes (or failed restarts) in a row before an instance is FAILED
STAYED_UP = 60.0        # a worker up this long before a crash starts a fresh failure count


class Supervisor:
    def __init__(self, settings: Settings, store: Store, steps: Steps, tts: ModelServers, asr: ModelServers,
                 shutting_down: Callable[[], bool], fence: Fence | None = None) -> None:
        self.settings = settings
        self.worker_fence = fence  # workers end themselves when the agent stops renewing the host lease
        self.store = store
        self.steps = steps
        self.tts = tts
        self.asr = asr
        self.shutting_down = shutting_down
        self.workers: dict[str, Child] = {}   # avatar -> its worker
        self.next_scan = 0.0                   # when to look for workers of ours nobody owns

    def child(self, avatar: str) -> Child:
        return self.workers.setdefault(avatar, Child(avatar))

    def pids(self) -> set[int]:
        return {c.proc.pid for c in self.workers.values() if c.proc is not None}

    # --- every tick ----------------------------------------------------------------------------

    def mine(self, instance: Instance) -> bool:
        """Whether the instance is placed on this host. A record from before hosts ("") is, on a
        fleet of one host; on a fleet of several (fencing) it could be any host's, and the
        fleet's leader places it again (replacement.py)."""
        return instance.host == self.settings.host_id or (instance.host == "" and self.worker_fence is None)

    def tick(self, now: float) -> None:
        instances = [i for i in self.store.list() if self.mine(i)]
        self._settle_workers(instances, now)
        records = {i.avatar: i for i in instances}
        for avatar, child in list(self.workers.items()):
            if child.busy or child.proc is None:
                if not child.busy and avatar not in records:
                    del self.workers[avatar]  # nothing runs, nothing is recorded: forgotten
                continue
            if not procs.alive(child.proc):
                # What the worker forked (its process group: it led a session of its own) outlives
                # it, re-parented to us; killed now, or it keeps the worker's GPU memory, its port.
                procs.kill_group(child.proc.pid)
                ended = procs.how_it_ended(child.proc)
                child.proc = None
                if avatar in records:
                    records[avatar] = self.finish(child, records[avatar], f"the worker {ended}", now)
        for instance in records.values():
            if instance is not None:
                self.step(self.child(instance.avatar), instance, now)

    def step(self, child: Child, instance: Instance, now: float) -> None:
        """The next move of one instance, by its state."""
        if child.busy:
            return
        state, avatar = instance.state, instance.avatar
        if state == State.STARTING:
            if child.proc is None:
                self._start(child, instance, now)
            else:  # spawned, but what came of it was not recorded (the store was away): wait again
                proc = child.proc
                self.steps.run(child, lambda report: self._wait_ready(report, child, instance, proc, time.monotonic()))
        elif state == State.RUNNING:
            if child.proc is None:
                self.finish(child, instance, "its process is gone", now)
            elif self._idle(instance, now):
                if self.store.transition(avatar, {State.RUNNING}, State.STOPPING, expect={
                        "connections": 0, "sessions": 0, "idle_since": instance.idle_since}):
                    log.info("%s: idle for %.0f s; stopping", avatar, now - instance.idle_since)
            elif now >= child.next_probe:  # its health, and its count of live sessions
                child.next_probe = now + self.settings.health_check_interval
                self.steps.run(child, lambda report: self._probe(report, child, instance))
        elif state == State.STOPPING:
            proc = child.proc or _find(instance)
            self.steps.run(child, lambda report: self._stop(report, child, instance, proc))
        elif state == State.EXITED:  # recorded by finish(), or left by a supervisor that died
            if instance.failures >= MAX_FAILURES:
                log.error("%s: %d failures in a row; FAILED until /avatar/restart", avatar, instance.failures)
                self.store.transition(avatar, {State.EXITED}, State.FAILED, port=0, pid=0, reserved_mb=0)
            else:
                self.store.transition(avatar, {State.EXITED}, State.BACKOFF,
                                      retry_at=now + backoff_delay(instance.failures))
        elif state == State.BACKOFF:
            if now >= instance.retry_at:
                self.store.transition(avatar, {State.BACKOFF}, State.STARTING, pid=0, pid_started=0.0,
                                      restarts=instance.restarts + 1)
        elif state == State.STOPPED:  # its stop recorded, its removal cut short
            self.store.remove(avatar, State.STOPPED)
        # FAILED: holds nothing and waits for /avatar/restart or a new start.

    def _idle(self, instance: Instance, now: float) -> bool:
        return (instance.connections == 0 and instance.sessions == 0 and instance.idle_since > 0
                and now - instance.idle_since >= self.settings.idle_timeout)

    def finish(self, child: Child, instance: Instance, why: str, now: float) -> Instance | None:
        """Every exit of a worker ends here (it exited, was killed as hung, never answered, or is
        gone), and what it means follows from the record: a requested stop (STOPPING: the stop
        step records it), a failed start, or a crash. A crash, or a failed start of an instance
        that ran before, is EXITED and then retried with backoff (step); a cold start that never
        worked is FAILED at once, its port freed. The record as it is now, if still this host's."""
        child.proc, child.misses = None, 0
        current = self.store.record(instance.avatar)
        if current is None or not self.mine(current):
            return None  # gone, or placed on another host meanwhile: not ours to carry on
        if current.token != instance.token or current.state not in (State.STARTING, State.RUNNING):
            return current
        tail = procs.log_tail(log_path(self.settings, current))
        if current.state == State.STARTING:
            self.store.add_counts({"start_failures_total": 1})
            log.error("%s: start failed: %s", current.avatar, why)
            if not current.ready_at:
                return self.store.transition(current.avatar, {State.STARTING}, State.FAILED, port=0, pid=0,
                                             reserved_mb=0, error=why)
            failures = current.failures + 1
        else:
            self.store.add_counts({"crashes_total": 1})
            failures = 1 if now - current.ready_at >= STAYED_UP else current.failures + 1
            log.warning("%s: %s (crash %d in a row)", current.avatar, why, failures)
            why = f"{why}\n{tail}"
        exited = self.store.transition(current.avatar, {current.state}, State.EXITED, pid=0, failures=failures,
                                       error=why)
        if exited is not None:
            self.step(child, exited, now)
            return self.store.record(current.avatar)
        return None

    # --- start ---------------------------------------------------------------------------------

    def _start(self, child: Child, instance: Instance, now: float) -> None:
        """Its avatar's folder (downloaded from the API when this host lacks the registered one),
        its TTS and ASR servers (or without one that cannot be had for now: the worker falls back
        to the offline voice, or goes without speech recognition), then a step spawns the worker
        and waits until its /health answers with the instance's token."""
        if self.settings.fleet_api_url and child.fetched_for != instance.token:
            self.steps.run(child, lambda report: self._fetch(report, child, instance))
            return
        try:
            spec = avatar_spec(self.settings, instance.avatar)
        except ValueError as exc:
            self.finish(child, instance, str(exc), now)
            return
        # Both asked each time, so that both servers start at once.
        if not all([self.tts.ready_for(spec.tts, now), self.asr.ready_for(spec.asr, now)]):
            return  # a server's start is under way; looked at again next tick
        if not ports.is_free(instance.port):
            self.finish(child, instance, f"port {instance.port} is in use by another process", now)
            return
        argv, env = command(self.settings, spec, instance, self.worker_fence)
        path = log_path(self.settings, instance)
        prune_instance_logs(self.settings.log_dir, {path, *(log_path(self.settings, i) for i in self.store.list())},
                            self.settings.log_retention_days)
        self.steps.run(child, lambda report: self._spawn(report, child, instance, argv, env))

    def _fetch(self, report: Report, child: Child, instance: Instance) -> None:
        try:
            if avatar_sync.ensure_local(self.settings, self.store, instance.avatar):
                log.info("%s: downloaded its registered folder from %s", instance.avatar, self.settings.fleet_api_url)
            why = None
        except (ValueError, OSError, StoreError) as exc:  # AvatarFetchError, a bad name, a full disk, the store away
            why = f"its avatar folder could not be had: {exc}"
        report(lambda: self._fetched(child, instance, why))

    def _fetched(self, child: Child, instance: Instance, why: str | None) -> None:
        if why is None:
            child.fetched_for = instance.token  # the next tick spawns it
        else:
            self.finish(child, instance, why, time.time())

    def _spawn(self, report: Report, child: Child, instance: Instance, argv: list[str], env: dict[str, str]) -> None:
        try:
            proc = procs.spawn(argv, env, log_path(self.settings, instance))
        except OSError as exc:  # fork or exec refused (no memory, no processes left)
            why = f"the worker could not be started: {exc}"
            report(lambda: self.finish(child, instance, why, time.time()))
            return
        report(lambda: self._spawned(child, instance, proc))
        self._wait_ready(report, child, instance, proc, time.monotonic())

    def _wait_ready(self, report: Report, child: Child, instance: Instance, proc: Proc, started: float) -> None:
        """Until the worker answers /health with the instance's token (and ready), exits, runs out
        of STARTUP_TIMEOUT, or is no longer wanted; what came of it is reported."""
        avatar = instance.avatar

        def not_wanted() -> bool:  # a stop came in, or we are shutting down: the stop step takes over
            try:
                current = self.store.record(avatar)
            except StoreError:
                return self.shutting_down()  # the store is away: keep waiting, within the timeout
            return current is None or current.state != State.STARTING or self.shutting_down()

        def healthy() -> bool:
            health = procs.worker_health(instance.url, instance.token, self.settings.api_token, timeout=0.5)
            return health is not None and health.get("ready", True) is True  # a model engine warms up first

        outcome = procs.wait_ready(proc, healthy, started + self.settings.startup_timeout - time.monotonic(),
                                   not_wanted)
        if outcome in (procs.Outcome.EXITED, procs.Outcome.TIMED_OUT):  # its helpers and its port too
            self._kill(avatar, proc, instance.port)
        report(lambda: self._spawn_ended(child, instance, proc, outcome, time.monotonic() - started))

    def _spawned(self, child: Child, instance: Instance, proc: Proc) -> None:
        child.proc = proc
        if self.store.transition(instance.avatar, {State.STARTING}, State.STARTING, pid=proc.pid,
                                 pid_started=procs.start_time(proc.pid)):
            log.info("%s: spawned pid %d on port %d (GPU %d)", instance.avatar, proc.pid, instance.port,
                     instance.gpu)

    def _spawn_ended(self, child: Child, instance: Instance, proc: Proc, outcome: procs.Outcome,
                     seconds: float) -> None:
        path, now = log_path(self.settings, instance), time.time()
        if outcome == procs.Outcome.CANCELLED:
            return  # stopped meanwhile: the stop step kills it
        if outcome == procs.Outcome.EXITED:
            self.finish(child, instance, f"the worker {procs.how_it_ended(proc)} while starting; its log "
                                         f"({path}) ends:\n{procs.log_tail(path)}", now)
        elif outcome == procs.Outcome.TIMED_OUT:
            self.finish(child, instance, f"the worker did not answer /health within STARTUP_TIMEOUT="
                                         f"{self.settings.startup_timeout:g} s; its log ({path}) ends:\n"
                                         f"{procs.log_tail(path)}", now)
        elif self.store.transition(instance.avatar, {State.STARTING}, State.RUNNING,
                                   expect={"token": instance.token, "host": instance.host}, ready_at=now, error=""):
            # Idle from now on if nobody is connected and it was not idle already (a restart keeps
            # its idle clock); a compare-and-set, as somebody may join right now.
            self.store.transition(instance.avatar, {State.RUNNING}, State.RUNNING,
                                  expect={"connections": 0, "idle_since": 0.0}, idle_since=now)
            self.store.add_counts(start_observation(seconds))
            log.info("%s: ready in %.2f s", instance.avatar, seconds)

    # --- health --------------------------------------------------------------------------------

    def _probe(self, report: Report, child: Child, instance: Instance) -> None:
        timeout = min(2.0, self.settings.health_check_interval)
        health = procs.worker_health(instance.url, instance.token, self.settings.api_token, timeout=timeout)
        if health is not None:
            relayed_sessions.release_gone(self.store, instance, lambda sid: relayed_sessions.worker_has_session(
                instance.url, sid, self.settings.api_token))
        report(lambda: self._probed(child, instance, health))

    def _probed(self, child: Child, instance: Instance, health: dict | None) -> None:
        """A worker that misses HEALTH_CHECK_MISSES health checks in a row is hung: killed, and
        then it ends like a crash."""
        if health is not None:
            child.misses = 0
            self._count_sessions(instance, int(health.get("sessions", 0)))
            return
        child.misses += 1
        allowed = self.settings.health_check_misses
        log.warning("%s: missed health check %d of %d", instance.avatar, child.misses, allowed)
        if child.misses < allowed or child.proc is None:
            return
        proc, why = child.proc, f"the worker stopped answering /health ({allowed} checks missed)"

        def kill(report: Report) -> None:
            self._kill(instance.avatar, proc, instance.port)
            report(lambda: self.finish(child, instance, why, time.time()))
        self.steps.run(child, kill)

    def _count_sessions(self, instance: Instance, sessions: int) -> None:
        """The worker's count of live WebRTC sessions is ground truth; `connections` is what the
        backend declared. An instance with sessions is never idle. Connections that no session has
        backed for STALE_CONNECTION_TIMEOUT were forgotten (a backend that never disconnected):
        they are dropped, and the instance idles out like any other."""
        instance = self.store.record(instance.avatar) or instance  # a join may have come in since
        now = time.time()
        changes: dict = {"sessions": sessions}
        if sessions:
            changes["active_at"] = now
        elif (instance.connections and instance.sessions == 0
              and now - max(instance.active_at, instance.ready_at) >= self.settings.stale_timeout):
            log.warning("%s: %d connection(s) but no live session for %.0f s; treating them as gone",
                        instance.avatar, instance.connections, now - max(instance.active_at, instance.ready_at))
            changes.update(connections=0, idle_since=now)
        if sessions != instance.sessions or len(changes) > 1:
            self.store.transition(instance.avatar, {State.RUNNING}, State.RUNNING, **changes)

    # --- stop ----------------------------------------------------------------------------------

    def _kill(self, avatar: str, proc: Proc | None, port: int) -> None:
        """The worker's whole tree, then its port free (said when something still holds it)."""
        if proc is not None:
            procs.kill_tree(proc, self.settings.stop_timeout)
        if port and not ports.wait_free(port, self.settings.stop_timeout):
            log.warning("%s: port %d still busy after the worker exited", avatar, port)

    def _stop(self, report: Report, child: Child, instance: Instance, proc: Proc | None) -> None:
        self._kill(instance.avatar, proc, instance.port)
        report(lambda: self._stopped(child, instance))

    def _stopped(self, child: Child, instance: Instance) -> None:
        """Killed and its port free: the record goes, or starts again (a restart)."""
        child.proc, child.misses, child.next_probe = None, 0, 0.0
        avatar = instance.avatar
        current = self.store.record(avatar)
        if current is not None and current.state == State.STOPPING and current.restart:
            self.store.transition(avatar, {State.STOPPING}, State.STARTING, restart=False, pid=0,
                                  pid_started=0.0, error="", failures=0, restarts=current.restarts + 1)
            log.info("%s: restarting", avatar)
        elif self.store.transition(avatar, {State.STOPPING}, State.STOPPED, pid=0):
            self.store.remove(avatar, State.STOPPED)
            log.info("%s: stopped", avatar)

    # --- workers the store does not know, or that nobody owns ------------------------------------

    def adopt(self, now: float) -> None:
        """On taking the lease: every worker of ours on the host is adopted, re-registered or
        stopped (reconcile.py). Records whose worker is gone are carried on by step(): a RUNNING
        one restarted as a crash, a STARTING one started, an EXITED one retried."""
        self._settle_workers(self.store.list(), now, scan=True)

    def _settle_workers(self, instances: list[Instance], now: float, scan: bool = False) -> None:
        """Our children the store does not record, and (every SCAN_EVERY s, or with `scan`)
        workers of ours on the host that we do not own: each avatar's settled in a step."""
        found = [w for proc in reconcile.unrecorded(self.workers, instances) if (w := procs.describe_worker(
            proc, self.settings.worker_module, self.settings.data_dir, self.settings.ports, self.settings.host_id))]
        if scan or now >= self.next_scan:
            self.next_scan = now + reconcile.SCAN_EVERY
            scanned = procs.find_workers(self.settings.worker_module, self.settings.data_dir, self.settings.ports,
                                         self.settings.host_id)
            found += reconcile.strays(scanned, self.workers)
        by_avatar: dict[str, list[procs.WorkerProcess]] = {}
        for worker in found:
            by_avatar.setdefault(worker.avatar, []).append(worker)
        for avatar, workers in by_avatar.items():
            child = self.child(avatar)
            self.steps.run(child, lambda report, child=child, workers=workers: self._settle(report, child, workers))

    def _settle(self, report: Report, child: Child, workers: list[procs.WorkerProcess]) -> None:
        """Make the store know each of an avatar's workers, or stop it (reconcile.settle)."""
        for worker in workers:
            kept, how = reconcile.settle(self.store, worker, self.settings, time.time())
            if kept:
                report(lambda worker=worker, how=how: self._owned(child, worker, how))
            else:
                log.warning("%s: stopping pid %d on port %d: %s", worker.avatar, worker.pid, worker.port, how)
                self._kill(worker.avatar, worker.proc, worker.port)
                report(lambda worker=worker: self._disowned(child, worker))

    def _owned(self, child: Child, worker: procs.WorkerProcess, how: str) -> None:
        if not (child.proc is worker.proc and how == "adopted"):  # owned and recorded: a start just ended
            log.info("%s: pid %d on port %d %s", worker.avatar, worker.pid, worker.port, how)
        child.proc = worker.proc

    @staticmethod
    def _disowned(child: Child, worker: procs.WorkerProcess) -> None:
        if child.proc is worker.proc:
            child.proc = None

    # --- shutdown ------------------------------------------------------------------------------

    def fence(self) -> int:
        """This host is cut off from the store: every worker ends now (SIGKILL to its group, no
        grace: the fleet may place its avatar on another host any moment). Their exits are
        collected by the next ticks. How many were running."""
        running = [c.proc for c in self.workers.values() if c.proc is not None and procs.alive(c.proc)]
        for proc in running:
            procs.kill_group(proc.pid)
        return len(running)

    def shutdown(self, supervising: bool) -> int:
        """Stop every worker this supervisor owns (in parallel: each may take STOP_TIMEOUT); then,
        while it still supervises this host, its instances' records: cleared on a fleet of one
        host, LOST on a fleet of several (the fleet places them again on the other hosts, as for
        a host that died). How many it stopped."""
        owned = [c.proc for c in self.workers.values() if c.proc is not None]
        self.workers.clear()
        threads = [threading.Thread(target=procs.kill_tree, args=(proc, self.settings.stop_timeout)) for proc in owned]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if supervising:
            for instance in filter(self.mine, self.store.list()):
                if self.worker_fence is not None and instance.state in HOLDS_PORT - {State.STOPPING}:
                    self.store.transition(instance.avatar, {instance.state}, State.LOST,
                                          expect={"token": instance.token, "host": instance.host}, pid=0,
                                          error=f"its host {self.settings.host_id} was shut down")
                    continue
                self.store.transition(instance.avatar, set(State) - {State.STOPPED}, State.STOPPING)
                self.store.transition(instance.avatar, {State.STOPPING}, State.STOPPED, pid=0)
                self.store.remove(instance.avatar, State.STOPPED)
        return len(owned)


def _find(instance: Instance) -> psutil.Process | None:
    """The instance's process, if the pid still names the same process (not a reused pid)."""
    if not instance.pid:
        return None
    try:
        proc = psutil.Process(instance.pid)
        if abs(proc.create_time() - instance.pid_started) < 0.01:
            return proc
    except psutil.Error:
        pass
    return None
