"""The use cases behind the REST API. Each writes a wish into the store in one atomic step and,
where the caller needs the outcome, waits (bounded) for the supervisor to carry it out."""
from __future__ import annotations

import secrets
import time

from lipsync_worker.avatar_config import AvatarError, NoSuchAvatar, check_name

from . import ports
from .gpus import read_gpus
from .instances import Instance, State
from .settings import Settings
from .store.base import Busy, Claim, NotFound, Store
from .workers import avatar_spec

POLL = 0.05


class BadRequest(ValueError):
    """The caller sent something wrong (400)."""


class Unavailable(Exception):
    """Capacity, the supervisor or a worker cannot serve this now (503)."""


class StartFailed(Unavailable):
    """The worker did not come up; the message carries the tail of its log."""


def instance_name(instance_id: str) -> str:
    """The existing backend sends ids like 'g_user_7' without avatar_name: that means avatar 'g'."""
    return instance_id.split("_user_")[0] if "_user_" in instance_id else instance_id


class Pool:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def supervised(self) -> bool:
        return self.store.lease_holder(time.time()) is not None

    def _require_supervisor(self) -> None:
        if not self.supervised():
            raise Unavailable("no supervisor is running (it owns the worker processes); "
                              "check the manager's log, or start it with ./start.sh")

    # --- start ---------------------------------------------------------------------------------

    def start(self, instance_id: str, avatar_name: str | None) -> tuple[Instance, bool]:
        """Join the avatar's instance or start one; returns once it is RUNNING."""
        try:
            check_name(instance_id)
            avatar = check_name(avatar_name or instance_name(instance_id))
        except AvatarError as exc:
            raise BadRequest(str(exc)) from None
        joined = self.store.join(avatar, time.time())
        if joined is not None and joined.state == State.RUNNING:
            return joined, False  # warm: one store write and one read, nothing else
        if joined is None:
            try:
                spec = avatar_spec(self.settings, avatar)
            except NoSuchAvatar as exc:
                raise NotFound(str(exc)) from None
            except (AvatarError, ValueError) as exc:
                raise BadRequest(str(exc)) from None
            self._require_supervisor()
            joined, created = self._claim(instance_id, avatar, spec.needs_gpu)
        else:
            created = False
        try:
            return self._wait_running(joined), created
        except Unavailable:
            try:  # this caller is not connected after all (to this instance, not a later one)
                self.store.disconnect(avatar, time.time(), token=joined.token)
            except NotFound:
                pass
            raise

    def _claim(self, instance_id: str, avatar: str, needs_gpu: bool) -> tuple[Instance, bool]:
        deadline = time.monotonic() + self.settings.stop_timeout + 10
        while True:
            claim = Claim(avatar=avatar, instance_id=instance_id, token=secrets.token_hex(16), now=time.time(),
                          max_instances=self.settings.max_avatars,
                          ports=ports.free_ports(self.settings.ports),
                          gpus=[(g.index, g.free_mb) for g in read_gpus(self.settings.gpu_ids)],
                          min_free_mb=self.settings.gpu_min_free_mb, gpu_required=needs_gpu)
            try:
                return self.store.claim(claim)
            except Busy:
                # Its previous instance is stopping; start afresh once that is done.
                if time.monotonic() >= deadline:
                    raise Unavailable(f"avatar {avatar!r} is still stopping; try again shortly") from None
                time.sleep(POLL)

    def _wait_running(self, instance: Instance) -> Instance:
        deadline = time.monotonic() + self.settings.startup_timeout + 15
        while True:
            current = self.store.get(instance.avatar)
            if current is None or current.token != instance.token or current.state in (State.FAILED,
                                                                                        State.STOPPED):
                why = current.error if current is not None and current.token == instance.token else ""
                raise StartFailed(f"avatar {instance.avatar!r} failed to start: {why or 'it was stopped'}")
            if current.state == State.RUNNING:
                return current
            if current.state == State.STOPPING and not current.restart:
                raise StartFailed(f"avatar {instance.avatar!r} was stopped while starting")
            if time.monotonic() >= deadline:
                raise Unavailable(f"avatar {instance.avatar!r} is not ready after "
                                  f"{self.settings.startup_timeout:g} s (state {current.state.value})")
            time.sleep(POLL)

    # --- the rest ------------------------------------------------------------------------------

    @staticmethod
    def find_name(name: str) -> str:
        try:
            return check_name(name)
        except AvatarError as exc:
            raise BadRequest(str(exc)) from None

    def forget_failed(self, avatar: str) -> None:
        """Drop a FAILED record, which holds nothing (for deleting its avatar)."""
        self.store.remove(avatar, State.FAILED)

    def find(self, key: str) -> Instance:
        self.find_name(key)
        instance = self.store.get(key)
        if instance is None and instance_name(key) != key:
            instance = self.store.get(instance_name(key))  # a joiner's id: g_user_8 -> avatar g
        if instance is None:
            raise NotFound(f"no instance named {key!r}")
        return instance

    def disconnect(self, key: str) -> Instance:
        return self.store.disconnect(self.find(key).avatar, time.time())

    def stop(self, key: str, force: bool = True) -> Instance | None:
        """force: stop now whatever the connections; else as a disconnect (the seed's semantics).
        Returns None once stopped, or the instance that stays up."""
        instance = self.find(key)
        if not force:
            instance = self.store.disconnect(instance.avatar, time.time())
            if instance.connections > 0 or self.settings.idle_timeout > 0:
                return instance
        self._require_supervisor()
        self._request_stop(instance)
        self._wait_gone([instance])
        return None

    def _request_stop(self, instance: Instance) -> None:
        stoppable = set(State) - {State.STOPPING, State.STOPPED}
        self.store.transition(instance.avatar, stoppable, State.STOPPING, restart=False)

    def _wait_gone(self, instances: list[Instance]) -> None:
        deadline = time.monotonic() + self.settings.stop_timeout + 15
        pending = {i.avatar: i.token for i in instances}
        while pending:
            for avatar, token in list(pending.items()):
                current = self.store.get(avatar)
                if current is None or current.token != token:
                    del pending[avatar]
            if pending and time.monotonic() >= deadline:
                raise Unavailable(f"still stopping: {', '.join(sorted(pending))}")
            if pending:
                time.sleep(POLL)

    def stop_all(self) -> int:
        instances = self.store.list()
        if instances:
            self._require_supervisor()
        for instance in instances:
            self._request_stop(instance)
        self._wait_gone(instances)
        return len(instances)

    def restart(self, key: str) -> Instance:
        """Stop the worker and start it again on the same port; clears FAILED."""
        instance = self.find(key)
        self._require_supervisor()
        if instance.state == State.FAILED:
            if self.store.remove(instance.avatar, State.FAILED):
                restarted, _ = self.start(instance.instance_id, instance.avatar)
                return restarted
        restarting = set(State) - {State.STOPPED, State.FAILED}
        if not self.store.transition(instance.avatar, restarting, State.STOPPING, restart=True):
            raise NotFound(f"no instance named {key!r}")
        return self._wait_running(instance)

    def list(self) -> list[Instance]:
        return self.store.list()
