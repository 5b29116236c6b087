"""The one long-lived owner of every child process on this host.

Like gunicorn's arbiter: signal handlers only enqueue; one loop takes the leader lease, reads the
store and hands each instance's next step (spawn and wait for readiness, kill a tree) to a thread
of its own, so a slow start never holds anything else up. Request handlers only write wishes into
the store (a STARTING record, a STOPPING state); this loop carries them out.
"""
from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from . import ports, procs, reconcile, relayed_sessions, systemd
from .instances import Instance, State
from .logs import prune_instance_logs, pump
from .metrics import start_observation
from .registration_jobs import RegistrationJobs
from .settings import Settings
from .store.base import Store, StoreError
from .tts import TtsModel, TtsServers, table
from .workers import avatar_spec, command, log_path

log = logging.getLogger("avatar_manager.supervisor")

TICK = 0.1              # seconds between looks at the store
LEASE_TTL = 5.0         # a supervisor silent this long is presumed dead and replaced
MAX_FAILURES = 5        # crashes in a row before an instance is FAILED
STAYED_UP = 60.0        # a worker up this long before a crash starts a fresh failure count
BACKOFF_MAX = 30.0
PR_SET_CHILD_SUBREAPER = 36

Child = subprocess.Popen | psutil.Process


def backoff_delay(failures: int) -> float:
    return min(BACKOFF_MAX, 0.5 * 2 ** max(0, failures - 1))


class Supervisor:
    def __init__(self, settings: Settings, store: Store, api_argv: list[str] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.api_argv = api_argv
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.tts = TtsServers(table(settings.tts_ports), str(settings.data_dir), settings.log_dir,
                              settings.startup_timeout, settings.stop_timeout, settings.api_token)
        self.children: dict[str, Child] = {}
        self.busy: set[str] = set()            # avatars with a step in flight
        self.next_probe: dict[str, float] = {}  # avatar -> when to check its /health again
        self.tts_restart_at: dict[str, float] = {}  # TTS model -> when to start its dead server again
        self.tts_failures: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self.next_scan = 0.0                   # when to look for workers of ours nobody owns
        self.lock = threading.Lock()           # guards children and busy
        self.steps = ThreadPoolExecutor(max_workers=max(4, settings.max_avatars), thread_name_prefix="step")
        self.leader = False
        self.api: subprocess.Popen | None = None
        self.api_started = 0.0
        self.ready_told = False
        self.signals: list[int] = []
        self.child_exited = False              # a SIGCHLD came: there may be strays to reap
        self.wakeup = threading.Event()
        # Registrations in a pool of their own: an upload never delays a start or a stop.
        self.registrations = RegistrationJobs(settings, store, self._shutting_down, self.wakeup.set)

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._enqueue_signal)
        # A child's exit wakes the loop at once, which then collects it (waitpid) and acts.
        signal.signal(signal.SIGCHLD, self._enqueue_child_exit)
        self._become_subreaper()
        log.info("supervisor %s starting", self.holder)
        try:
            while not self.signals:
                try:
                    self.tick()
                except StoreError as exc:
                    log.error("store unavailable: %s", exc)
                    self.leader = False
                self.wakeup.wait(TICK)
                self.wakeup.clear()
        finally:
            log.info("supervisor stopping (signal %s)", self.signals[:1])
            self.shutdown()

    def _enqueue_signal(self, signum, frame) -> None:
        self.signals.append(signum)
        self.wakeup.set()

    def _enqueue_child_exit(self, signum, frame) -> None:
        self.child_exited = True
        self.wakeup.set()

    def _shutting_down(self) -> bool:
        return bool(self.signals)

    @staticmethod
    def _become_subreaper() -> None:
        """Orphaned grandchildren of a worker get re-parented to us, so we can reap them."""
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("cannot become a child subreaper; orphans go to init")

    def tick(self) -> None:
        now = time.time()
        self._keep_api_running()
        if not self.leader:  # a leader holds the lease itself: nothing to look at
            self._free_dead_lease(now)
        leader = self.store.take_lease(self.holder, LEASE_TTL, now)
        if leader and not self.leader:
            log.info("supervisor %s leads; adopting live workers", self.holder)
            self.adopt()
        self.leader = leader
        if not leader:
            return
        if not self.ready_told and self._api_answers():
            systemd.notify("READY=1")
            self.ready_told = True
            log.info("ready: the API and the web console at %s/", self.settings.api_url)
        self._notice_exits()
        instances = self.store.list()
        self._settle_workers(instances, now)
        for instance in instances:
            self._step(instance, now)
        self.registrations.tick(now)
        for model in self.tts.reap():
            self._tts_failed(model.name, now)
        for name, due in list(self.tts_restart_at.items()):
            if now >= due and f"tts:{name}" not in self.busy:
                del self.tts_restart_at[name]
                self._submit(f"tts:{name}", self._restart_tts, self.tts.models[name])
        if self.child_exited:  # not every tick: listing our children reads /proc
            self.child_exited = False
            self._reap_strays()

    def _step(self, instance: Instance, now: float) -> None:
        avatar = instance.avatar
        with self.lock:
            if avatar in self.busy:
                return
            owned = avatar in self.children
        state = instance.state
        if state == State.STARTING and not owned:
            self._submit(avatar, self.start, instance)
        elif state == State.STOPPING:
            self._submit(avatar, self.stop, instance)
        elif state == State.BACKOFF and now >= instance.retry_at:
            self.store.transition(avatar, {State.BACKOFF}, State.STARTING, pid=0, pid_started=0.0,
                                  restarts=instance.restarts + 1)
        elif state == State.RUNNING and not owned:
            self._crashed(instance, "its process is gone")
        elif state == State.RUNNING:
            if (instance.connections == 0 and instance.idle_since
                    and now - instance.idle_since >= self.settings.idle_timeout
                    and self.store.stop_if_idle(avatar, now - self.settings.idle_timeout)):
                log.info("%s: idle for %.0f s; stopping", avatar, now - instance.idle_since)
                self.wakeup.set()
            # Not idle (it may have a live session): its health, and its session count, are checked.
            elif now >= self.next_probe.get(avatar, 0.0):
                self.next_probe[avatar] = now + self.settings.health_check_interval
                self._submit(avatar, self.probe, instance)

    def _submit(self, key: str, step, subject) -> None:
        """Run step(subject) in a thread; nothing else runs for `key` (an avatar) meanwhile."""
        with self.lock:
            self.busy.add(key)

        def run() -> None:
            try:
                step(subject)
            except Exception:
                log.exception("%s: %s failed", key, step.__name__)
            finally:
                with self.lock:
                    self.busy.discard(key)
                self.wakeup.set()
        self.steps.submit(run)

    def _restart_tts(self, model: TtsModel) -> None:
        problem = self.tts.ensure(model, self._shutting_down)
        if problem:
            log.error("%s", problem)
            self._tts_failed(model.name, time.time())
        else:
            self.tts_failures.pop(model.name, None)

    def _tts_failed(self, name: str, now: float) -> None:
        """One more failure of the voice server in a row: its next start waits longer."""
        count = self.tts_failures[name] = self.tts_failures.get(name, 0) + 1
        self.tts_restart_at[name] = now + backoff_delay(count)

    def _free_dead_lease(self, now: float) -> None:
        """A leader on this host whose process is gone (SIGKILLed) need not be waited out."""
        holder = self.store.lease_holder(now)
        if holder is None or holder == self.holder:
            return
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            log.info("the previous supervisor (%s) is gone; taking over now", holder)
            self.store.drop_lease(holder)

    def _notice_exits(self) -> None:
        with self.lock:
            exited = [(a, c) for a, c in self.children.items() if a not in self.busy and not procs.alive(c)]
            for avatar, _ in exited:
                del self.children[avatar]
        for avatar, child in exited:
            # What the worker forked (its process group: it led a session of its own) outlives it,
            # re-parented to us; kill it now, or it keeps the worker's GPU memory, even its port.
            procs.kill_group(child.pid)
            instance = self.store.get(avatar)
            if instance and instance.state == State.RUNNING and instance.pid == child.pid:
                self._crashed(instance, f"the worker {procs.how_it_ended(child)}")

    def _crashed(self, instance: Instance, why: str) -> None:
        tail = procs.log_tail(log_path(self.settings, instance))
        stayed_up = instance.ready_at and time.time() - instance.ready_at >= STAYED_UP
        failures = 1 if stayed_up else instance.failures + 1
        self.store.add_counts({"crashes_total": 1})
        if self.store.transition(instance.avatar, {State.RUNNING}, State.EXITED, pid=0, error=f"{why}\n{tail}"):
            log.warning("%s: %s (crash %d in a row)", instance.avatar, why, failures)
            self._retry_or_fail(instance, failures, State.EXITED)

    def _retry_or_fail(self, instance: Instance, failures: int, current: State) -> None:
        if failures >= MAX_FAILURES:
            log.error("%s: %d failures in a row; FAILED until /avatar/restart", instance.avatar, failures)
            self.store.transition(instance.avatar, {current}, State.FAILED, port=0, pid=0, reserved_mb=0,
                                  failures=failures)
        else:
            delay = backoff_delay(failures)
            self.store.transition(instance.avatar, {current}, State.BACKOFF, failures=failures,
                                  retry_at=time.time() + delay)

    def _reap_strays(self) -> None:
        """Reap zombies re-parented to us (grandchildren of killed workers)."""
        mine = {c.pid for c in self.children.values()} | self.tts.pids() | self.registrations.pids()
        if self.api is not None:
            mine.add(self.api.pid)
        for child in psutil.Process().children():
            try:
                if child.pid not in mine and child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError):
                pass

    # --- steps, each in a thread of its own ----------------------------------------------------

    def start(self, instance: Instance) -> None:
        """Spawn the worker and wait until its /health answers with the instance's token."""
        avatar, started = instance.avatar, time.monotonic()
        try:
            spec = avatar_spec(self.settings, avatar)
        except ValueError as exc:
            return self._start_failed(instance, None, str(exc))
        problem = self.tts.ensure(spec.tts, self._shutting_down)
        if problem:
            log.warning("%s: %s; the worker falls back to the offline voice", avatar, problem)
        if not ports.is_free(instance.port):
            return self._start_failed(instance, None, f"port {instance.port} is in use by another process")
        argv, env = command(self.settings, spec, instance)
        path = log_path(self.settings, instance)
        prune_instance_logs(self.settings.log_dir, {path, *(log_path(self.settings, i) for i in self.store.list())},
                            self.settings.log_retention_days)
        proc = procs.spawn(argv, env, path)
        with self.lock:
            self.children[avatar] = proc
        if not self.store.transition(avatar, {State.STARTING}, State.STARTING, pid=proc.pid,
                                     pid_started=procs.start_time(proc.pid)):
            return  # stopped meanwhile; the stop step kills it
        log.info("%s: spawned pid %d on port %d (GPU %d)", avatar, proc.pid, instance.port, instance.gpu)

        def not_wanted() -> bool:  # a stop came in, or we are shutting down: the stop step takes over
            current = self.store.get(avatar)
            return current is None or current.state != State.STARTING or self._shutting_down()

        def healthy() -> bool:
            health = procs.worker_health(instance.port, instance.token, self.settings.api_token, timeout=0.5)
            return health is not None and health.get("ready", True) is True  # a model engine warms up first

        outcome = procs.wait_ready(proc, healthy, started + self.settings.startup_timeout - time.monotonic(),
                                   not_wanted)
        if outcome == procs.Outcome.CANCELLED:
            return
        if outcome == procs.Outcome.EXITED:
            return self._start_failed(instance, proc, f"the worker {procs.how_it_ended(proc)} while "
                                                     f"starting; its log ({path}) ends:\n{procs.log_tail(path)}")
        if outcome == procs.Outcome.TIMED_OUT:
            return self._start_failed(instance, proc, f"the worker did not answer /health within "
                                                     f"STARTUP_TIMEOUT={self.settings.startup_timeout:g} s; "
                                                     f"its log ({path}) ends:\n{procs.log_tail(path)}")
        now = time.time()
        ready = self.store.transition(avatar, {State.STARTING}, State.RUNNING, ready_at=now, reserved_mb=0,
                                      error="")
        if ready and ready.connections == 0 and not ready.idle_since:
            self.store.transition(avatar, {State.RUNNING}, State.RUNNING, idle_since=now)
        self.store.add_counts(start_observation(time.monotonic() - started))
        log.info("%s: ready in %.2f s", avatar, time.monotonic() - started)

    def _kill(self, avatar: str, child: subprocess.Popen | psutil.Process | None, port: int) -> None:
        """The worker's whole tree, then its port free (said when something still holds it)."""
        if child is not None:
            procs.kill_tree(child, self.settings.stop_timeout)
        if port and not ports.wait_free(port, self.settings.stop_timeout):
            log.warning("%s: port %d still busy after the worker exited", avatar, port)

    def _start_failed(self, instance: Instance, proc: subprocess.Popen | None, why: str) -> None:
        if proc is not None:
            with self.lock:
                if self.children.get(instance.avatar) is proc:
                    del self.children[instance.avatar]
            self._kill(instance.avatar, proc, instance.port)
        self.store.add_counts({"start_failures_total": 1})
        log.error("%s: start failed: %s", instance.avatar, why)
        current = self.store.get(instance.avatar)
        if current is None or current.state != State.STARTING:
            return
        if current.ready_at:  # it ran before: a crash loop, retried with backoff
            self.store.transition(instance.avatar, {State.STARTING}, State.STARTING, error=why)
            self._retry_or_fail(current, current.failures + 1, State.STARTING)
        else:  # a cold start that never worked: tell the callers, free the port
            self.store.transition(instance.avatar, {State.STARTING}, State.FAILED, port=0, pid=0,
                                  reserved_mb=0, error=why)

    def probe(self, instance: Instance) -> None:
        """A worker that misses HEALTH_CHECK_MISSES health checks in a row is hung: kill it, restart it."""
        timeout = min(2.0, self.settings.health_check_interval)
        health = procs.worker_health(instance.port, instance.token, self.settings.api_token, timeout=timeout)
        if health is not None:
            self.misses.pop(instance.avatar, None)
            relayed_sessions.release_gone(self.store, instance, lambda sid: relayed_sessions.worker_has_session(
                instance.port, sid, self.settings.api_token))
            self._reconcile(instance, int(health.get("sessions", 0)))
            return
        misses = self.misses[instance.avatar] = self.misses.get(instance.avatar, 0) + 1
        allowed = self.settings.health_check_misses
        log.warning("%s: missed health check %d of %d", instance.avatar, misses, allowed)
        if misses < allowed:
            return
        del self.misses[instance.avatar]
        with self.lock:
            child = self.children.pop(instance.avatar, None)
        self._kill(instance.avatar, child, instance.port)
        self._crashed(instance, f"the worker stopped answering /health ({allowed} checks missed)")

    def _reconcile(self, instance: Instance, sessions: int) -> None:
        """The worker's count of live WebRTC sessions is ground truth; `connections` is what the
        backend declared. An instance with sessions is never idle. Connections that no session has
        backed for STALE_CONNECTION_TIMEOUT were forgotten (a backend that never disconnected):
        they are dropped, and the instance idles out like any other."""
        instance = self.store.get(instance.avatar) or instance  # a join may have come in since
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

    def stop(self, instance: Instance) -> None:
        """Kill the worker's whole tree, wait for its port to be free, then drop the record (or
        start it again, for a restart)."""
        avatar = instance.avatar
        with self.lock:
            child = self.children.pop(avatar, None)
        if child is None and instance.pid:
            child = self._find(instance)
        self._kill(avatar, child, instance.port)
        self.next_probe.pop(avatar, None)
        self.misses.pop(avatar, None)
        current = self.store.get(avatar)
        if current is not None and current.restart:
            self.store.transition(avatar, {State.STOPPING}, State.STARTING, restart=False, pid=0,
                                  pid_started=0.0, error="", failures=0, restarts=current.restarts + 1)
            log.info("%s: restarting", avatar)
        elif self.store.transition(avatar, {State.STOPPING}, State.STOPPED, pid=0):
            self.store.remove(avatar, State.STOPPED)
            log.info("%s: stopped", avatar)

    @staticmethod
    def _find(instance: Instance) -> psutil.Process | None:
        """The instance's process, if the pid still names the same process (not a reused pid)."""
        try:
            proc = psutil.Process(instance.pid)
            if abs(proc.create_time() - instance.pid_started) < 0.01:
                return proc
        except psutil.Error:
            pass
        return None

    # --- leadership ----------------------------------------------------------------------------

    def adopt(self) -> None:
        """Take over the workers and TTS servers a previous supervisor left running (or this one
        ran while another held the lease): each worker is adopted, re-registered or stopped
        (reconcile.py). Records whose worker is gone are carried on by the steps: a RUNNING one
        restarted as a crash, a STARTING one started."""
        self.tts.adopt()
        self._settle_workers(self.store.list(), time.time(), scan=True)

    def _settle_workers(self, instances: list[Instance], now: float, scan: bool = False) -> None:
        """Our children the store does not record, and (every SCAN_EVERY s, or with `scan`)
        workers of ours on the host that we do not own: each avatar's settled in a step."""
        with self.lock:
            unrecorded = reconcile.unrecorded(self.children, instances, self.busy)
        found = [w for child in unrecorded if (w := procs.describe_worker(
            child, self.settings.worker_module, self.settings.data_dir, self.settings.ports))]
        if scan or now >= self.next_scan:
            self.next_scan = now + reconcile.SCAN_EVERY
            relayed_sessions.forget_stale(self.store, instances)
            scanned = procs.find_workers(self.settings.worker_module, self.settings.data_dir, self.settings.ports)
            with self.lock:
                found += reconcile.strays(scanned, self.children, self.busy)
        by_avatar: dict[str, list[procs.WorkerProcess]] = {}
        for worker in found:
            by_avatar.setdefault(worker.avatar, []).append(worker)
        for avatar, workers in by_avatar.items():
            self._submit(avatar, self._settle, workers)

    def _settle(self, workers: list[procs.WorkerProcess]) -> None:
        """Make the store know each of an avatar's workers, or stop it (reconcile.settle)."""
        for worker in workers:
            kept, how = reconcile.settle(self.store, worker, self.settings.api_token, self.settings.max_avatars,
                                         time.time())
            if kept:
                with self.lock:
                    owned = self.children.get(worker.avatar) is worker.proc
                    self.children[worker.avatar] = worker.proc
                if not (owned and how == "adopted"):  # owned and recorded: a start just finished
                    log.info("%s: pid %d on port %d %s", worker.avatar, worker.pid, worker.port, how)
                continue
            log.warning("%s: stopping pid %d on port %d: %s", worker.avatar, worker.pid, worker.port, how)
            with self.lock:
                if self.children.get(worker.avatar) is worker.proc:
                    del self.children[worker.avatar]
            self._kill(worker.avatar, worker.proc, worker.port)

    # --- the API server --------------------------------------------------------------------------

    def _keep_api_running(self) -> None:
        if self.api_argv is None or (self.api is not None and self.api.poll() is None):
            return
        if self.api is not None:
            if time.monotonic() - self.api_started < 5:
                # It cannot even start (a port in use, a bad config): stop rather than spin.
                raise SystemExit(f"the API server {procs.how_it_ended(self.api)} at start; "
                                 "see the lines above")
            log.error("the API server %s; starting it again", procs.how_it_ended(self.api))
        env = procs.child_env(keep=("API_TOKEN", "REDIS_URL"))
        self.api = subprocess.Popen(self.api_argv, cwd=procs.ROOT, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pump(self.api.stdout, "api")
        self.api_started = time.monotonic()

    def _api_answers(self) -> bool:
        if self.api_argv is None:
            return True
        return procs.get_json(self.settings.api_url + "/health", timeout=0.5) is not None

    # --- shutdown --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every worker and TTS server this supervisor owns, then the API, then let go of the lease."""
        systemd.notify("STOPPING=1")
        self.steps.shutdown(wait=True, cancel_futures=True)
        self.registrations.shutdown()
        with self.lock:
            owned = list(self.children.items())
            self.children.clear()
        threads = [threading.Thread(target=procs.kill_tree, args=(child, self.settings.stop_timeout))
                   for _, child in owned]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.leader:  # the leader owned every instance: none runs any more
            try:
                for instance in self.store.list():
                    self.store.transition(instance.avatar, set(State) - {State.STOPPED}, State.STOPPING)
                    self.store.transition(instance.avatar, {State.STOPPING}, State.STOPPED, pid=0)
                    self.store.remove(instance.avatar, State.STOPPED)
            except StoreError as exc:
                log.error("cannot clear the instances from the store: %s", exc)
        self.tts.stop_all()
        if self.api is not None:
            procs.kill_tree(self.api, self.settings.stop_timeout, leader=False)
        try:
            self.store.drop_lease(self.holder)
        except StoreError as exc:  # it expires on its own within LEASE_TTL
            log.warning("cannot give up the supervisor lease: %s", exc)
        log.info("supervisor stopped; %d worker(s) stopped", len(owned))
