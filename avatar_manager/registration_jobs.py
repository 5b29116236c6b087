"""Running the registrations the API queued: each one a child process (`python -m avatar_manager
register --job=ID`), at most REGISTER_WORKERS at once, in threads of their own.

Preparing an upload can take minutes of CPU; the supervisor's lifecycle steps (starts, stops,
health checks) must never wait behind one, so registrations get this pool and never a step
thread. What waits beyond the pool is the queue: the jobs the store holds as "queued", bounded by
the slots registration.submit claims (a 429 past them).
"""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from . import procs, registration
from .registration import JobState
from .settings import Settings
from .store.base import Store, StoreError

log = logging.getLogger("avatar_manager.registration_jobs")

# Decoders use a thread each per core, and glibc gives each thread up to 64 MB of address space
# of its own: without this, REGISTER_MEMORY_MB would be eaten by reservations on a many-core host.
CHILD_ENV = {"MALLOC_ARENA_MAX": "2"}


class RegistrationJobs:
    def __init__(self, settings: Settings, store: Store, shutting_down: Callable[[], bool],
                 done: Callable[[], None]) -> None:
        self.settings = settings
        self.store = store
        self.shutting_down = shutting_down
        self.done = done                       # called when a job ends: the supervisor looks again
        self.running: dict[str, subprocess.Popen | None] = {}  # job id -> its child, once spawned
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=settings.register_workers, thread_name_prefix="register")

    def tick(self, now: float) -> None:
        """Start queued jobs, oldest first, while a worker is free; fail jobs a dead supervisor left
        behind; forget old finished ones."""
        with self.lock:  # before the listing: a job gone from here by then has its outcome recorded
            running = set(self.running)
        jobs = self.store.list_docs("job")
        free = self.settings.register_workers - len(running)
        for job in sorted(jobs, key=lambda j: j["created"]):
            if job["state"] == JobState.QUEUED and free > 0 and job["id"] not in running:
                free -= 1
                with self.lock:
                    self.running[job["id"]] = None
                self.pool.submit(self._run, job)
            elif (job["state"] == JobState.PREPARING and job["id"] not in running
                  and now - job["updated"] > self.settings.register_timeout + self.settings.stop_timeout + 60):
                # Not ours, and past any child's time: its supervisor died while it ran.
                registration.release(self.store, job)
                registration.free_slot(self.store, job)
                registration.finish_job(self.store, job, error={
                    "status": 503, "message": "registration stopped: the manager restarted while it ran; send it again"})
        registration.prune_jobs(self.store, now, jobs)

    def pids(self) -> set[int]:
        with self.lock:
            return {child.pid for child in self.running.values() if child is not None}

    def shutdown(self) -> None:
        """Running children see shutting_down() and are killed; queued jobs stay for the next leader."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, job: dict) -> None:
        try:
            self._prepare(job)
        except Exception:
            log.exception("registration of %s failed", job["avatar"])
            try:
                self._fail(job, 500, "registration failed: the manager could not run it (see its log)")
            except StoreError as exc:  # still "preparing": tick() fails it once its time is past
                log.error("registration of %s: cannot record its failure: %s", job["avatar"], exc)
        finally:
            with self.lock:
                self.running.pop(job["id"], None)
            try:
                registration.free_slot(self.store, job)
            except StoreError as exc:  # the slot's claim expires on its own (registration.claim_ttl)
                log.error("registration of %s: cannot free its slot: %s", job["avatar"], exc)
            self.done()

    def _prepare(self, job: dict) -> None:
        """The register command for the job, a child of ours, bounded in time."""
        job = {**job, "state": JobState.PREPARING, "updated": time.time()}
        self.store.put_doc("job", job["id"], job)
        path = self.settings.log_dir / f"register_{job['avatar']}.log"
        try:
            proc = procs.spawn(registration.job_argv(job), procs.child_env(keep=("REDIS_URL",), **CHILD_ENV), path)
        except OSError as exc:  # fork or exec refused (no memory, no processes left)
            log.error("registration of %s: cannot start its process: %s", job["avatar"], exc)
            return self._fail(job, 503, f"registration could not start: {exc.strerror or exc}; try again later")
        with self.lock:
            self.running[job["id"]] = proc
        outcome = procs.Outcome.CANCELLED
        try:
            # Bounded, and given up at shutdown rather than holding the manager's exit for minutes.
            outcome = procs.wait_ready(proc, lambda: False, self.settings.register_timeout, self.shutting_down)
        finally:
            if outcome != procs.Outcome.EXITED:
                procs.kill_tree(proc, self.settings.stop_timeout)
        status, why = {
            procs.Outcome.CANCELLED: (503, "registration stopped: the manager is shutting down; send it again"),
            procs.Outcome.TIMED_OUT: (503, f"registration did not finish within REGISTER_TIMEOUT="
                                           f"{self.settings.register_timeout:g} s"),
        }.get(outcome, (500, f"registration failed: the child {procs.how_it_ended(proc)}: {procs.log_tail(path, 5)}"))
        self._fail(job, status, why)
        log.info("registration of %s: %s", job["avatar"], (self.store.get_doc("job", job["id"]) or {}).get("state"))

    def _fail(self, job: dict, status: int, why: str) -> None:
        """End the job as failed, unless its child recorded the outcome; then the name and the
        upload are released (a finished child has done so itself, before telling anyone: the name
        may be taken again already, so it is not ours to unlock then)."""
        current = self.store.get_doc("job", job["id"]) or job
        if current["state"] in registration.ENDED:
            return
        registration.release(self.store, current)
        registration.finish_job(self.store, current, error={"status": status, "message": why})
