"""Where a new instance goes: every capacity, host, port and GPU rule, decided once, here, for
both stores. A store reads every record, asks `place` (or `may_restore`) and writes the answer
in one atomic step: one SQLite transaction, or one Redis WATCH/MULTI that is retried when a
record changed meanwhile. No rule is written twice (once in SQL, once in Lua)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .hosts import Host
from .instances import HOLDS_PORT, JOINABLE, Instance, State, check_transition, joined


class CapacityError(Exception):
    """No room for another instance (MAX_AVATARS, ports or GPU memory); the message says which."""


class Full(CapacityError):
    """Every MAX_AVATARS slot is held (the one capacity error an eviction can cure)."""


class Busy(Exception):
    """The avatar's instance is stopping; try again once it is gone."""


@dataclass(frozen=True)
class Claim:
    """A start: join the avatar's instance, or create one on a host, a port (and a GPU)."""
    avatar: str
    instance_id: str
    token: str
    now: float
    hosts: list[Host]       # the live hosts, each with its free ports and GPUs as last seen
    min_free_mb: int        # a GPU needs this much free, less what starting instances reserved
    gpu_required: bool      # the engine cannot run on the CPU


@dataclass(frozen=True)
class _Room:
    host: Host
    port: int
    held: int                   # instances holding a port on it
    reserved: dict[int, int]    # GPU -> MB that its starting instances reserved


def place(claim: Claim, records: list[Instance]) -> tuple[Instance, bool]:
    """(the avatar's record after this claim, whether it is a new instance), given every record.
    A joinable instance is joined; otherwise a new STARTING record replaces a dead one (FAILED,
    STOPPED, EXITED) or is added. Busy while its old instance stops; Full when every host is at
    its MAX_AVATARS; CapacityError without a free port or, for an engine that needs one, a GPU."""
    old = next((r for r in records if r.avatar == claim.avatar), None)
    if old is not None and old.state in JOINABLE:
        return joined(old, claim.now), False
    if old is not None:
        if old.state == State.STOPPING:
            raise Busy(claim.avatar)
        check_transition({old.state}, State.STARTING)
    others = [r for r in records if r.state in HOLDS_PORT and r.avatar != claim.avatar]
    room, port, gpu = _choose(claim, others)
    host = room.host
    return Instance(avatar=claim.avatar, instance_id=claim.instance_id, state=State.STARTING, port=port, gpu=gpu,
                    reserved_mb=claim.min_free_mb if gpu >= 0 else 0, token=claim.token, connections=1,
                    created=claim.now, active_at=claim.now, host=host.id, address=host.address,
                    public_host=host.public_host, gpu_required=claim.gpu_required), True


def place_again(lost: Instance, hosts: list[Host], min_free_mb: int, records: list[Instance]) -> Instance:
    """A LOST instance on a live host, its users and its token kept (the same instance, started
    again elsewhere), or FAILED when no host has room."""
    check_transition({lost.state}, State.STARTING)
    claim = Claim(avatar=lost.avatar, instance_id=lost.instance_id, token=lost.token, now=lost.created,
                  hosts=hosts, min_free_mb=min_free_mb, gpu_required=lost.gpu_required)
    others = [r for r in records if r.state in HOLDS_PORT and r.avatar != lost.avatar]
    try:
        room, port, gpu = _choose(claim, others)
    except CapacityError as exc:
        return replace(lost, state=State.FAILED, port=0, pid=0, reserved_mb=0,
                       error=f"{lost.error}; no other host can run it: {exc}")
    return replace(lost, state=State.STARTING, host=room.host.id, address=room.host.address,
                   public_host=room.host.public_host, port=port, gpu=gpu,
                   reserved_mb=min_free_mb if gpu >= 0 else 0, pid=0, pid_started=0.0, sessions=0,
                   restarts=lost.restarts + 1, retry_at=0.0)


def _choose(claim: Claim, others: list[Instance]) -> tuple[_Room, int, int]:
    """(host, port, GPU or -1). An engine that needs a GPU goes to the GPU with the most memory
    free across hosts, less what starting instances reserved; anything else to the host with
    the fewest instances (then a GPU there if one has room, else the CPU). Ties keep the
    earlier host and GPU."""
    if not claim.hosts:
        raise CapacityError("no host agent is live to run an instance")
    rooms, full, portless = [], [], []
    for host in claim.hosts:
        # A record from before hosts ("") counts against every host: it may be on any of them.
        held = [r for r in others if r.host in (host.id, "")]
        if len(held) >= host.max_instances:
            full.append(host)
            continue
        taken = {r.port for r in held}
        port = next((p for p in host.ports if p not in taken), None)
        if port is None:
            portless.append(host)
            continue
        reserved: dict[int, int] = {}
        for r in held:
            # Its memory shows in the host's figures once measured after it came up; until then
            # what it reserved counts (both times on the host's own clock).
            if r.state == State.STARTING or (r.state == State.RUNNING and r.ready_at > host.measured_at):
                reserved[r.gpu] = reserved.get(r.gpu, 0) + r.reserved_mb
        rooms.append(_Room(host, port, len(held), reserved))
    if not rooms:
        if not portless:
            raise Full(_full_message(full))
        raise CapacityError("no free port in the avatar port range (AVATAR_BASE_PORT .. + MAX_AVATARS)"
                            + _on(portless, claim.hosts))
    if claim.gpu_required and any(r.host.gpus for r in rooms):
        best = max(rooms, key=lambda r: place_on_gpu(r.host.gpus, r.reserved, claim.min_free_mb)[1])
        gpu, free = place_on_gpu(best.host.gpus, best.reserved, claim.min_free_mb)
        if gpu < 0:
            free_list = ", ".join(f"{_prefix(r.host, claim.hosts)}GPU {i} {f - r.reserved.get(i, 0)} MB"
                                  for r in rooms for i, f in r.host.gpus)
            raise CapacityError(f"no GPU has GPU_MIN_FREE_MB={claim.min_free_mb} MB free (free: {free_list})")
        return best, best.port, gpu
    least = min(rooms, key=lambda r: r.held)
    return least, least.port, place_on_gpu(least.host.gpus, least.reserved, claim.min_free_mb)[0]


def place_on_gpu(gpus: list[tuple[int, int]], reserved: dict[int, int], min_free_mb: int) -> tuple[int, int]:
    """(the GPU with the most memory free after reservations, at least min_free_mb; its free MB),
    a tie keeping the earlier one; (-1, -1) for none."""
    best, best_free = -1, -1
    for index, free_mb in gpus:
        free = free_mb - reserved.get(index, 0)
        if free >= min_free_mb and free > best_free:
            best, best_free = index, free
    return best, best_free


def _full_message(full: list[Host]) -> str:
    if len(full) == 1:
        return f"all MAX_AVATARS={full[0].max_instances} instances are in use"
    return f"every host is full (MAX_AVATARS: {', '.join(f'{h.id} {h.max_instances}' for h in full)})"


def _prefix(host: Host, hosts: list[Host]) -> str:
    return f"{host.id} " if len(hosts) > 1 else ""


def _on(some: list[Host], hosts: list[Host]) -> str:
    return f" on {', '.join(h.id for h in some)}" if len(hosts) > 1 else ""


def may_restore(instance: Instance, records: list[Instance], max_instances: int) -> bool:
    """A live worker the store had lost is recorded again only if no record has its avatar, none
    holding a port on its host has its port, and one of the host's max_instances slots is free."""
    if any(r.avatar == instance.avatar for r in records):
        return False
    held = [r for r in records if r.state in HOLDS_PORT and r.host in (instance.host, "")]
    return len(held) < max_instances and instance.port not in {r.port for r in held}
