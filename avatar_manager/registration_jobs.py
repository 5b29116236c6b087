"""Running the registrations the API queued: each one the worker's prepare child
(registration.prepare_argv), at most REGISTER_WORKERS at once, watched from the supervisor's loop.

Preparing an upload can take minutes of CPU; the supervisor's lifecycle steps (starts, stops,
health checks) must never wait behind one, so tick() starts children, polls them and kills those
past their time, and never waits for one: a job needs no thread. What waits beyond the running
jobs is the queue: the jobs the store holds as "queued", bounded by the slots registration.submit
claims (a 429 past them).

A job's files are in its upload folder: the upload, the request (the child's stdin) and the
answer (its stdout); what the child says goes to LOG_DIR/register_NAME.log.
"""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import procs, registration
from .registration import JobState, RegistrationError
from .settings import Settings
from .store.base import Store, StoreError

log = logging.getLogger("avatar_manager.registration_jobs")

REQUEST = "request.json"
ANSWER = "answer.json"
MANAGER_FAILED = {"status": 500, "message": "registration failed: the manager could not run it (see its log)"}
SHUTTING_DOWN = {"status": 503, "message": "registration stopped: the manager is shutting down; send it again"}


@dataclass
class Running:
    """A job whose child runs, or has exited and waits to be collected."""
    job: dict                   # its store document, as last written
    proc: subprocess.Popen
    deadline: float             # time.monotonic() past which the child is killed
    answer: Path                # the child's stdout
    log: Path                   # the child's stderr
    stopped: dict | None = None  # the error to record: we killed the child (past its time, at shutdown)


class RegistrationJobs:
    def __init__(self, settings: Settings, store: Store, shutting_down: Callable[[], bool],
                 done: Callable[[], None]) -> None:
        self.settings = settings
        self.store = store
        self.shutting_down = shutting_down
        self.done = done                       # called when a job ends: the supervisor looks again
        self.running: dict[str, Running] = {}  # job id -> its child

    def collect(self) -> None:
        """Collect the children that exited and kill those past their time (whoever leads now:
        they are this agent's children). Never waits for a child."""
        for run in list(self.running.values()):
            self._watch(run)

    def tick(self, now: float) -> None:
        """collect(); then (the fleet's leader only) start queued jobs, oldest first, while fewer
        than REGISTER_WORKERS run; fail jobs a dead leader left behind; forget old finished ones."""
        self.collect()
        jobs = self.store.list_docs("job")  # after the collecting: those gone have their outcome recorded
        for job in sorted(jobs, key=lambda j: j["created"]):
            if (job["state"] == JobState.QUEUED and len(self.running) < self.settings.register_workers
                    and not self.shutting_down()):
                self._guarded(job, self._start)
            elif (job["state"] == JobState.PREPARING and job["id"] not in self.running
                  and now - job["updated"] > self.settings.register_timeout + self.settings.stop_timeout + 60):
                # Not ours, and past any child's time: its supervisor died while it ran.
                self._end(job, error={"status": 503, "message": "registration stopped: the manager restarted "
                                                                "while it ran; send it again"})
        registration.prune_jobs(self.store, now, jobs)

    def pids(self) -> set[int]:
        return {run.proc.pid for run in self.running.values()}

    def shutdown(self) -> None:
        """Kill the running children and record their jobs as stopped (this waits for them, up to
        STOP_TIMEOUT each); queued jobs stay for the next leader."""
        for run in self.running.values():
            self._kill(run, SHUTTING_DOWN)
        for run in list(self.running.values()):
            try:
                run.proc.wait(timeout=self.settings.stop_timeout)
            except subprocess.TimeoutExpired:
                log.error("registration of %s: pid %d did not exit after SIGKILL", run.job["avatar"], run.proc.pid)
            del self.running[run.job["id"]]
            self._guarded(run.job, lambda job: self._collect(run))

    # --- one job ---------------------------------------------------------------------------------

    def _guarded(self, job: dict, step: Callable[[dict], None]) -> None:
        """A step of the job; a failure of the manager's own ends the job, never the loop."""
        try:
            step(job)
        except StoreError as exc:
            # The job stays as the store has it: a queued one is tried again, one left "preparing"
            # is failed once its time is past (tick).
            log.error("registration of %s: the store failed: %s", job["avatar"], exc)
        except Exception:
            log.exception("registration of %s failed", job["avatar"])
            self._end(job, error=MANAGER_FAILED)

    def _start(self, job: dict) -> None:
        """Spawn the job's prepare child, its request on stdin, its answer to a file."""
        job = {**job, "state": JobState.PREPARING, "updated": time.time()}
        self.store.put_doc("job", job["id"], job)
        folder = Path(job["upload"]).parent
        path = self.settings.log_dir / f"register_{job['avatar']}.log"
        try:
            registration.check_request(self.settings, self.store, job["avatar"], job["meta"])
            request = registration.prepare_request(self.settings, Path(job["upload"]), job["avatar"], job["meta"])
            (folder / REQUEST).write_text(request.to_json())
            proc = procs.spawn(registration.prepare_argv(), registration.child_env(), path,
                               stdin=folder / REQUEST, stdout=folder / ANSWER)
        except RegistrationError as exc:
            return self._end(job, error=exc.to_json())
        except OSError as exc:  # fork or exec refused (no memory, no processes left), a file not written
            log.error("registration of %s: cannot start its process: %s", job["avatar"], exc)
            return self._end(job, error={"status": 503, "message": f"registration could not start: "
                                                                   f"{exc.strerror or exc}; try again later"})
        self.running[job["id"]] = Running(job, proc, time.monotonic() + self.settings.register_timeout,
                                          folder / ANSWER, path)

    def _watch(self, run: Running) -> None:
        """Collect the child once it exited; kill it when it is past its time or we shut down."""
        if run.proc.poll() is not None:
            del self.running[run.job["id"]]
            self._guarded(run.job, lambda job: self._collect(run))
        elif run.stopped is None and self.shutting_down():
            self._kill(run, SHUTTING_DOWN)
        elif run.stopped is None and time.monotonic() > run.deadline:
            self._kill(run, {"status": 503, "message": f"registration did not finish within REGISTER_TIMEOUT="
                                                       f"{self.settings.register_timeout:g} s"})

    @staticmethod
    def _kill(run: Running, error: dict) -> None:
        """SIGKILL the child's process group (spawn made it lead one), which does not wait: its exit
        is collected at a later tick. It still holds its pid (not collected), so the group is its."""
        run.stopped = run.stopped or error
        procs.kill_group(run.proc.pid)

    def _collect(self, run: Running) -> None:
        """Record what the exited child answered: the avatar's record, or why there is none."""
        job = run.job
        try:
            with open(run.answer, "rb") as f:
                output = f.read(registration.MAX_ANSWER_BYTES).decode("utf-8", "replace")
        except OSError:
            output = ""
        try:
            result = registration.outcome(run.proc.returncode, output)
        except RegistrationError as exc:
            return self._end(job, error=exc.to_json())
        if result is None:
            return self._end(job, error=run.stopped or {
                "status": 500, "message": f"registration failed: the child {procs.how_it_ended(run.proc)}: "
                                          f"{procs.log_tail(run.log, 5)}"})
        record = registration.make_record(job["avatar"], job["meta"], result,
                                          registration.seal_folder(self.settings, job["avatar"]))
        self.store.put_doc("avatar", job["avatar"], record)
        self._end(job, record=record)

    def _end(self, job: dict, record: dict | None = None, error: dict | None = None) -> None:
        """Release the name and the upload, then record the outcome (in that order: whoever hears
        it may register the name again at once), then free the job's place in the queue."""
        try:
            registration.release(self.store, job)
            registration.finish_job(self.store, job, record=record, error=error)
            log.info("registration of %s: %s", job["avatar"], "done" if record is not None else error["message"])
        except StoreError as exc:  # still "preparing": tick() fails it once its time is past
            log.error("registration of %s: cannot record its outcome: %s", job["avatar"], exc)
        try:
            registration.free_slot(self.store, job)
        except StoreError as exc:  # the slot's claim expires on its own (registration.claim_ttl)
            log.error("registration of %s: cannot free its slot: %s", job["avatar"], exc)
        self.done()
