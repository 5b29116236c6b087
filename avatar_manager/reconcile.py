"""What runs on this host against what the store records: every live worker of ours is known to
the store, or it is stopped; none is left holding a port that nobody knows of.

A store can lose records while workers run: Redis restarted empty, the SQLite file deleted or
replaced. A worker the store no longer knows still holds its port, so every start would find
no free port, /status would show free slots and stop-all would stop nothing. The supervisor
compares, every tick, the workers it owns with the records (cheap: no system call), and every
SCAN_EVERY seconds, and when it takes the lease, every process on the host, for workers of ours
it does not own (a manager killed outright leaves them). Each such worker is settled here:
- its record is there, for this very process: it is adopted as it is;
- there is no record of its avatar: one is rebuilt from what we started it with (avatar, port,
  GPU, token: its command line and environment) and what its /health says (its pid, its live
  sessions). Connections are unknown, so 0; its live sessions keep it from idling out. Users'
  sessions stay up;
- anything else (its avatar or port now belongs to another instance, it does not answer
  /health as itself, no slot is free): it is stopped, its whole tree, and its port freed.
"""
from __future__ import annotations

from . import procs
from .instances import Instance, State, url_host
from .settings import Settings
from .steps import Child, Proc
from .store.base import Store

SCAN_EVERY = 5.0     # seconds between scans of every process for workers of ours nobody owns
HEALTH_TIMEOUT = 2.0


def unrecorded(workers: dict[str, Child], records: list[Instance]) -> list[Proc]:
    """Our workers that the store does not record (no record of their avatar with their pid),
    leaving out those with a step in flight (a start records its pid only after the spawn)."""
    pids = {r.avatar: r.pid for r in records}
    return [c.proc for avatar, c in workers.items()
            if c.proc is not None and not c.busy and pids.get(avatar) != c.proc.pid]


def strays(found: list[procs.WorkerProcess], workers: dict[str, Child]) -> list[procs.WorkerProcess]:
    """Workers of ours running on the host that we do not own."""
    owned = {c.proc.pid for c in workers.values() if c.proc is not None}
    busy = {avatar for avatar, c in workers.items() if c.busy}
    return [w for w in found if w.pid not in owned and w.avatar not in busy]


def settle(store: Store, worker: procs.WorkerProcess, settings: Settings, now: float) -> tuple[bool, str]:
    """Make the store know the worker, one of this host's: (True, how) when it does now,
    (False, why) when the worker must be stopped instead."""
    record = store.get(worker.avatar)
    if record is not None and record.avatar != worker.avatar:
        record = None  # get() fell back to an instance id: another avatar's record
    if record is not None:
        if record.host not in ("", settings.host_id):
            return False, f"avatar {worker.avatar} runs on host {record.host} now"
        if record.token != worker.token:
            return False, f"avatar {worker.avatar} is now another instance (port {record.port})"
        if record.pid != worker.pid or abs(record.pid_started - worker.started) >= 0.01:
            return False, f"its record names pid {record.pid}, not this one"
        if record.state in (State.RUNNING, State.STOPPING):  # STOPPING: the stop step takes it
            return True, "adopted"
        # STARTING: a start cut short with its manager, which start() does again; the rest are down.
        return False, f"its record is {record.state.value}"
    if worker.gpu is None:
        return False, "its CUDA_VISIBLE_DEVICES names no single GPU"
    url = f"http://{url_host(settings.host_address)}:{worker.port}"
    health = procs.worker_health(url, worker.token, settings.api_token, timeout=HEALTH_TIMEOUT)
    if health is None or health.get("avatar") != worker.avatar or health.get("pid") != worker.pid:
        return False, "it does not answer /health as itself"
    if health.get("ready", True) is not True:
        return False, "it is not ready (a start cut short)"
    if not store.restore(rebuilt(worker, settings, int(health.get("sessions", 0)), now), settings.max_avatars):
        return False, "its port or its slot went to another instance"
    return True, "re-registered: the store had lost it"


def rebuilt(worker: procs.WorkerProcess, settings: Settings, sessions: int, now: float) -> Instance:
    """The record of a running worker whose record was lost, as faithfully as it can be known."""
    return Instance(avatar=worker.avatar, instance_id=worker.avatar, state=State.RUNNING, port=worker.port,
                    gpu=worker.gpu, reserved_mb=0, token=worker.token, connections=0, created=worker.started,
                    pid=worker.pid, pid_started=worker.started, ready_at=worker.started, idle_since=now,
                    sessions=sessions, active_at=now if sessions else 0.0, host=settings.host_id,
                    address=settings.host_address, public_host=settings.public_host)
