"""The store of record: one small interface, every allocation one atomic step inside it.

Two backends implement it: SQLite (a file, safe across processes on one host; each step is one
BEGIN IMMEDIATE transaction) and Redis (safe across hosts; each step is one Lua script).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..instances import Instance, State, check_transition


class StoreError(Exception):
    """The store cannot be reached or answered with an error."""


class CapacityError(Exception):
    """No room for another instance (MAX_AVATARS, ports or GPU memory); the message says which."""


class Full(CapacityError):
    """Every MAX_AVATARS slot is held (the one capacity error an eviction can cure)."""


class Busy(Exception):
    """The avatar's instance is stopping; try again once it is gone."""


class NotFound(Exception):
    """No instance with that name or id."""


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


def place_on_gpu(claim: Claim, reserved: dict[int, int]) -> int:
    """The GPU with the most memory free after reservations, at least min_free_mb; -1 for the CPU.
    The Redis backend does the same in Lua (store/redis.py) and a test keeps the two in step."""
    best, best_free = -1, -1
    for index, free_mb in claim.gpus:
        free = free_mb - reserved.get(index, 0)
        if free >= claim.min_free_mb and free > best_free:
            best, best_free = index, free
    if best < 0 and claim.gpus and claim.gpu_required:
        raise CapacityError(f"no GPU has GPU_MIN_FREE_MB={claim.min_free_mb} MB free "
                            f"(free: {', '.join(f'GPU {i} {f - reserved.get(i, 0)} MB' for i, f in claim.gpus)})")
    return best


class Store(ABC):
    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError when the store cannot be used."""

    @abstractmethod
    def join(self, avatar: str, now: float) -> Instance | None:
        """Connections + 1 (and active_at = now) on the avatar's joinable instance; None if none."""

    @abstractmethod
    def claim(self, claim: Claim) -> tuple[Instance, bool]:
        """Join the avatar's instance or create one in STARTING; (instance, created).
        Full at MAX_AVATARS, CapacityError without a port or GPU, Busy while its old instance is
        still stopping."""

    @abstractmethod
    def restore(self, instance: Instance, max_instances: int) -> bool:
        """Record a live worker the store had lost (it was wiped or replaced): insert `instance`
        only if no record has its avatar, none holding a port has its port, and one of the
        max_instances slots is free; atomically. False, changing nothing, otherwise."""

    @abstractmethod
    def get(self, key: str) -> Instance | None:
        """By avatar name, else by instance id."""

    @abstractmethod
    def list(self) -> list[Instance]:
        """Every record, oldest first."""

    @abstractmethod
    def disconnect(self, key: str, now: float, token: str | None = None) -> Instance:
        """Connections - 1 (not below 0); idle_since = now when it reaches 0. NotFound if absent.
        With a token: only while the record is still that instance (else returned unchanged)."""

    def transition(self, avatar: str, allowed: frozenset[State] | set[State], to: State,
                   **changes) -> Instance | None:
        """Move to `to` and apply `changes` only if the state is one of `allowed`; None otherwise.
        Every move is checked against instances.TRANSITIONS, the one table of the lifecycle."""
        check_transition(allowed, to)
        return self._transition(avatar, allowed, to, **changes)

    @abstractmethod
    def _transition(self, avatar: str, allowed: frozenset[State] | set[State], to: State,
                    **changes) -> Instance | None:
        """transition() as one atomic compare-and-set, unchecked."""

    @abstractmethod
    def stop_if_idle(self, avatar: str, idle_before: float) -> bool:
        """RUNNING with no connections since idle_before or earlier, and no live session as the
        worker last said -> STOPPING, atomically."""

    @abstractmethod
    def remove(self, avatar: str, state: State) -> bool:
        """Delete the record if it is still in `state`."""

    @abstractmethod
    def take_lease(self, holder: str, ttl: float, now: float) -> bool:
        """Become (or stay) the supervisor: true while `holder` holds an unexpired lease."""

    @abstractmethod
    def drop_lease(self, holder: str) -> None:
        """Give the lease up, if `holder` has it."""

    @abstractmethod
    def lease_holder(self, now: float) -> str | None:
        """Who supervises now, or None when nobody holds a live lease."""

    @abstractmethod
    def add_counts(self, counts: dict[str, float]) -> None:
        """Add to named counters (metrics shared by every manager process)."""

    @abstractmethod
    def counts(self) -> dict[str, float]:
        """Every counter."""

    # Documents: small JSON records by kind and key (the avatar registry, registration jobs, and
    # the per-name registration lock, which expires so a crashed registration frees its name).

    @abstractmethod
    def put_doc(self, kind: str, key: str, value: dict) -> None:
        """Write (or replace) a document."""

    @abstractmethod
    def claim_doc(self, kind: str, key: str, value: dict, ttl: float, now: float) -> bool:
        """Write the document only if there is none, or only an expired claim; atomically."""

    @abstractmethod
    def get_doc(self, kind: str, key: str) -> dict | None:
        """The document, or None."""

    @abstractmethod
    def list_docs(self, kind: str) -> list[dict]:
        """Every document of a kind, in key order."""

    @abstractmethod
    def delete_doc(self, kind: str, key: str) -> bool:
        """Delete it; False if there was none."""

    def close(self) -> None:
        """Release connections."""
