"""Where a new instance goes: every capacity, port and GPU rule, decided once, here, for both
stores. A store reads every record, asks `place` (or `may_restore`) and writes the answer in one
atomic step: one SQLite transaction, or one Redis WATCH/MULTI that is retried when a record
changed meanwhile. No rule is written twice (once in SQL, once in Lua)."""
from __future__ import annotations

from dataclasses import dataclass

from .instances import HOLDS_PORT, JOINABLE, Instance, State, check_transition, joined


class CapacityError(Exception):
    """No room for another instance (MAX_AVATARS, ports or GPU memory); the message says which."""


class Full(CapacityError):
    """Every MAX_AVATARS slot is held (the one capacity error an eviction can cure)."""


class Busy(Exception):
    """The avatar's instance is stopping; try again once it is gone."""


@dataclass(frozen=True)
class Claim:
    """A start: join the avatar's instance, or create one with a port (and GPU) leased."""
    avatar: str
    instance_id: str
    token: str
    now: float
    max_instances: int
    ports: list[int]                 # candidates in order, already checked free on the system
    gpus: list[tuple[int, int]]      # (index, free MB) in preference order; empty: no GPU
    min_free_mb: int                 # a GPU needs this much free, less what starting instances reserved
    gpu_required: bool               # the engine cannot run on the CPU


def place(claim: Claim, records: list[Instance]) -> tuple[Instance, bool]:
    """(the avatar's record after this claim, whether it is a new instance), given every record.
    A joinable instance is joined; otherwise a new STARTING record replaces a dead one (FAILED,
    STOPPED, EXITED) or is added. Busy while its old instance stops; Full at max_instances;
    CapacityError without a free port or, for an engine that needs one, a GPU."""
    old = next((r for r in records if r.avatar == claim.avatar), None)
    if old is not None and old.state in JOINABLE:
        return joined(old, claim.now), False
    if old is not None:
        if old.state == State.STOPPING:
            raise Busy(claim.avatar)
        check_transition({old.state}, State.STARTING)
    held = [r for r in records if r.state in HOLDS_PORT and r.avatar != claim.avatar]
    if len(held) >= claim.max_instances:
        raise Full(f"all MAX_AVATARS={claim.max_instances} instances are in use")
    taken = {r.port for r in held}
    port = next((p for p in claim.ports if p not in taken), None)
    if port is None:
        raise CapacityError("no free port in the avatar port range (AVATAR_BASE_PORT .. + MAX_AVATARS)")
    reserved: dict[int, int] = {}
    for r in held:
        if r.state == State.STARTING:
            reserved[r.gpu] = reserved.get(r.gpu, 0) + r.reserved_mb
    gpu = place_on_gpu(claim, reserved)
    return Instance(avatar=claim.avatar, instance_id=claim.instance_id, state=State.STARTING, port=port, gpu=gpu,
                    reserved_mb=claim.min_free_mb if gpu >= 0 else 0, token=claim.token, connections=1,
                    created=claim.now, active_at=claim.now), True


def place_on_gpu(claim: Claim, reserved: dict[int, int]) -> int:
    """The GPU with the most memory free after reservations, at least min_free_mb (a tie keeps the
    earlier one); -1 for the CPU."""
    best, best_free = -1, -1
    for index, free_mb in claim.gpus:
        free = free_mb - reserved.get(index, 0)
        if free >= claim.min_free_mb and free > best_free:
            best, best_free = index, free
    if best < 0 and claim.gpus and claim.gpu_required:
        raise CapacityError(f"no GPU has GPU_MIN_FREE_MB={claim.min_free_mb} MB free "
                            f"(free: {', '.join(f'GPU {i} {f - reserved.get(i, 0)} MB' for i, f in claim.gpus)})")
    return best


def may_restore(instance: Instance, records: list[Instance], max_instances: int) -> bool:
    """A live worker the store had lost is recorded again only if no record has its avatar, none
    holding a port has its port, and one of the max_instances slots is free."""
    if any(r.avatar == instance.avatar for r in records):
        return False
    held = [r for r in records if r.state in HOLDS_PORT]
    return len(held) < max_instances and instance.port not in {r.port for r in held}
