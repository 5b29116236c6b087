"""The store of record: one small interface over two backends, SQLite (a file, safe across
processes on one host) and Redis (safe across hosts).

A backend knows how to read records and how to write atomically, nothing about the rules: which
states may follow which (instances.TRANSITIONS), how users are counted (instances.joining, left)
and where a new instance goes (placement) are decided in Python, once, and applied by the
backend in one atomic step (a compare-and-set, or a read-decide-write it retries when a record
changed meanwhile).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import fields
from typing import Callable, Iterable, TypeVar

from .. import placement
from ..hosts import Host
from ..instances import JOINABLE, Instance, State, check_transition, joining, left
from ..placement import Claim

T = TypeVar("T")
FIELDS = frozenset(f.name for f in fields(Instance))
CAS_TRIES = 1000  # a compare-and-set lost this often in a row means something is wrong, not busy


class StoreError(Exception):
    """The store cannot be reached or answered with an error."""


class NotFound(Exception):
    """No instance with that name or id."""


Decide = Callable[[list[Instance]], tuple[T, list[Instance]]]


class Store(ABC):
    # --- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError when the store cannot be used."""

    @abstractmethod
    def record(self, avatar: str) -> Instance | None:
        """The avatar's record."""

    @abstractmethod
    def list(self) -> list[Instance]:
        """Every record, oldest first (created, then avatar)."""

    @abstractmethod
    def _update(self, avatar: str, allowed: Iterable[State] | None, expect: dict, add: dict,
                changes: dict) -> Instance | None:
        """One compare-and-set: only while the record's state is one of `allowed` (None: any) and
        each field in `expect` has that value, add `add` to its fields and set `changes`; the
        record as it is then, or None (nothing changed). Field names are checked by the caller."""

    @abstractmethod
    def _atomically(self, decide: Decide) -> T:
        """Read every record, call decide(records) -> (result, records to write whole), write
        them, as one atomic step (retried, calling decide again, if a record changed meanwhile);
        the result. An exception from decide changes nothing."""

    @abstractmethod
    def remove(self, avatar: str, state: State) -> bool:
        """Delete the record if it is still in `state`."""

    @abstractmethod
    def clock(self) -> float:
        """The store's time in seconds: every host judges leases by this one clock."""

    @abstractmethod
    def take_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> bool:
        """Take or renew the lease `name` (the fleet's leader, a host): true while `holder` holds
        it unexpired. `now`: the store's clock() unless given."""

    @abstractmethod
    def drop_lease(self, name: str, holder: str) -> None:
        """Give the lease up, if `holder` has it."""

    @abstractmethod
    def lease_holder(self, name: str, now: float | None = None) -> str | None:
        """Who holds the lease, or None when nobody holds it unexpired."""

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

    # --- the operations, on the rules of instances.py and placement.py ---------------------------

    def get(self, key: str) -> Instance | None:
        """By avatar name, else the oldest record with that instance id."""
        found = self.record(key)
        return found or next((i for i in self.list() if i.instance_id == key), None)

    def transition(self, avatar: str, allowed: Iterable[State], to: State, expect: dict | None = None,
                   **changes) -> Instance | None:
        """Move to `to` and apply `changes` only if the state is one of `allowed` (and the fields
        in `expect` have those values); None otherwise. Every move is checked against
        instances.TRANSITIONS, the one table of the lifecycle."""
        allowed = frozenset(allowed)
        check_transition(allowed, to)
        return self._transition(avatar, allowed, to, expect, **changes)

    def _transition(self, avatar: str, allowed: Iterable[State], to: State, expect: dict | None = None,
                    **changes) -> Instance | None:
        """transition() unchecked (tests set up states with it)."""
        return self._checked_update(avatar, frozenset(allowed), expect or {}, {}, {"state": to, **changes})

    def _checked_update(self, avatar: str, allowed: frozenset[State] | None, expect: dict, add: dict,
                        changes: dict) -> Instance | None:
        unknown = (set(expect) | set(add) | set(changes)) - FIELDS
        if unknown:
            raise StoreError(f"no such instance field(s): {', '.join(sorted(unknown))}")
        return self._update(avatar, allowed, expect, add, changes)

    def join(self, avatar: str, now: float) -> Instance | None:
        """One more user on the avatar's joinable instance (instances.joining); None if none."""
        added, changes = joining(now)
        return self._checked_update(avatar, JOINABLE, {}, added, changes)

    def disconnect(self, key: str, now: float, token: str | None = None) -> Instance:
        """One user less (instances.left). NotFound if absent. With a token: only while the
        record is still that instance (else returned unchanged)."""
        for _ in range(CAS_TRIES):
            instance = self.get(key)
            if instance is None:
                raise NotFound(key)
            if token is not None and instance.token != token:
                return instance
            after = left(instance, now)
            done = self._update(instance.avatar, None, {"token": instance.token, "connections": instance.connections},
                                {}, {"connections": after.connections, "idle_since": after.idle_since})
            if done is not None:
                return done
        raise StoreError(f"disconnect {key!r}: the record kept changing")

    def claim(self, claim: Claim) -> tuple[Instance, bool]:
        """Join the avatar's instance or create one in STARTING (placement.place); (instance,
        created). Full at MAX_AVATARS, CapacityError without a port or GPU, Busy while its old
        instance is still stopping."""
        def decide(records: list[Instance]) -> tuple[tuple[Instance, bool], list[Instance]]:
            instance, created = placement.place(claim, records)
            return (instance, created), [instance]
        return self._atomically(decide)

    def place_lost(self, avatar: str, token: str, hosts: list[Host], min_free_mb: int) -> Instance | None:
        """The avatar's LOST instance (still that one: `token`) STARTING on a live host, or
        FAILED when none has room (placement.place_again); None when it is not LOST any more."""
        def decide(records: list[Instance]) -> tuple[Instance | None, list[Instance]]:
            lost = next((r for r in records if r.avatar == avatar), None)
            if lost is None or lost.token != token or lost.state != State.LOST:
                return None, []
            placed = placement.place_again(lost, hosts, min_free_mb, records)
            return placed, [placed]
        return self._atomically(decide)

    def restore(self, instance: Instance, max_instances: int) -> bool:
        """Record a live worker the store had lost (placement.may_restore); False, changing
        nothing, when it may not be."""
        def decide(records: list[Instance]) -> tuple[bool, list[Instance]]:
            ok = placement.may_restore(instance, records, max_instances)
            return ok, [instance] if ok else []
        return self._atomically(decide)
