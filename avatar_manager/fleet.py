"""The use cases behind the REST API. Each writes a wish into the store in one atomic step and,
where the caller needs the outcome, waits (bounded) for the supervisor to carry it out."""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace

from contracts.avatars import AvatarError, NoSuchAvatar, check_name

from . import hosts
from .instances import Instance, State
from .lease import FLEET
from .placement import Busy, Claim, Full
from .settings import Settings
from .store.base import NotFound, Store
from .workers import avatar_spec

log = logging.getLogger("avatar_manager.fleet")
POLL = 0.05


class BadRequest(ValueError):
    """The caller sent something wrong (400)."""


class Unavailable(Exception):
    """Capacity, the supervisor or a worker cannot serve this now (503)."""


class Conflict(Exception):
    """The request contradicts what is running (409); nothing was changed."""


class StartFailed(Unavailable):
    """The worker did not come up; the message carries the tail of its log."""


def avatar_of(instance_id: str) -> str:
    """The avatar an instance id names: the existing backend sends ids like 'g_user_7' without
    avatar_name, which means avatar 'g'."""
    return instance_id.split("_user_")[0] if "_user_" in instance_id else instance_id


def valid_name(name: str) -> str:
    """The name, if it may name an avatar or an instance; BadRequest otherwise."""
    try:
        return check_name(name)
    except AvatarError as exc:
        raise BadRequest(str(exc)) from None


class Fleet:
    """The avatar instances as the REST API sees them: start (join or create), leave, stop,
    restart, list. The supervisor carries out what these write into the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def supervised(self) -> bool:
        """The fleet has a leader: a host agent is live (each owns the worker processes of its host)."""
        return self.store.lease_holder(FLEET) is not None

    def _require_supervisor(self) -> None:
        if not self.supervised():
            raise Unavailable("no supervisor is running (it owns the worker processes); "
                              "check the manager's log, or start it with ./start.sh")

    def offers(self) -> list[hosts.Host]:
        """The live hosts and what each offers: as it last published (within a second), except
        this very host (an API beside its agent), whose free ports and GPUs are read now."""
        here = self.settings.host_id
        return [hosts.measure(self.settings) if h.id == here else h for h in hosts.live_hosts(self.store)]

    # --- start ---------------------------------------------------------------------------------

    @property
    def start_wait(self) -> float:
        """The longest a start may take: STARTUP_TIMEOUT for the worker, then, when it fails, its
        kill (STOP_TIMEOUT to exit, STOP_TIMEOUT for its port) before the supervisor says why.
        With the defaults (30 + 2 x 10 + 5 s) that is below the 60 s the existing backend waits,
        so a slow start fails here with its reason, not as a timeout in the client."""
        return self.settings.startup_timeout + 2 * self.settings.stop_timeout + 5

    def start(self, instance_id: str, avatar_name: str | None) -> tuple[Instance, bool]:
        """Join the avatar's instance or start one; returns once it is RUNNING, with this caller's
        own connection count (the n-th of several concurrent starts gets n), and whether this
        call created the instance."""
        valid_name(instance_id)
        avatar = valid_name(avatar_name or avatar_of(instance_id))
        deadline = time.monotonic() + self.start_wait
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
            joined, created = self._claim(instance_id, avatar, spec.needs_gpu, deadline)
        else:
            created = False
        try:
            running = self._wait_running(joined, deadline)
        except Unavailable:
            try:  # this caller is not connected after all (to this instance, not a later one)
                left = self.store.disconnect(avatar, time.time(), token=joined.token)
            except NotFound:
                left = None  # gone already
            if left is not None and left.token == joined.token and left.connections == 0:
                # Nobody waits for it any more: a refused start must not spawn a worker later.
                self.store.transition(avatar, {State.STARTING, State.BACKOFF, State.LOST}, State.STOPPING,
                                      restart=False)
            raise
        return replace(running, connections=joined.connections), created

    def _claim(self, instance_id: str, avatar: str, needs_gpu: bool, deadline: float) -> tuple[Instance, bool]:
        # The hosts publish what they offer every second: after a store lost its data, wait for that.
        hosts_due = time.monotonic() + 2 * hosts.RENEW_EVERY
        while True:
            offers = self.offers()
            if not offers and time.monotonic() < min(hosts_due, deadline):
                time.sleep(POLL)
                continue
            claim = Claim(avatar=avatar, instance_id=instance_id, token=secrets.token_hex(16), now=time.time(),
                          hosts=offers, min_free_mb=self.settings.gpu_min_free_mb, gpu_required=needs_gpu)
            try:
                return self.store.claim(claim)
            except Busy:
                # Its previous instance is stopping; start afresh once that is done.
                if time.monotonic() >= deadline:
                    raise Unavailable(f"avatar {avatar!r} is still stopping; try again shortly") from None
            except Full:
                if not self._make_room() or time.monotonic() >= deadline:
                    raise
            time.sleep(POLL)

    def _make_room(self) -> bool:
        """At MAX_AVATARS: stop the instance idle the longest, as idle instances are a cache, not
        a reason to refuse. True while a slot may be on its way (look again); False when nothing
        can be evicted. While any instance is stopping, its slot is awaited rather than another
        evicted, so concurrent starts (two users of one new avatar) do not evict two for one slot."""
        instances = self.store.list()
        if any(i.state == State.STOPPING and not i.restart for i in instances):
            return True
        idle = [i for i in instances if i.state == State.RUNNING and i.connections == 0 and i.sessions == 0
                and i.idle_since > 0]
        if not idle:
            return False
        longest = min(idle, key=lambda i: i.idle_since)
        # Compare-and-set: a user who joined (or a session that opened) since keeps it running. When
        # it fails, the caller looks again: another start may have evicted it, or it is busy now.
        if self.store.transition(longest.avatar, {State.RUNNING}, State.STOPPING,
                                 expect={"connections": 0, "sessions": 0, "idle_since": longest.idle_since}):
            log.info("%s: evicted (idle since %s) to make room at MAX_AVATARS=%d", longest.avatar,
                     time.strftime("%H:%M:%S", time.localtime(longest.idle_since)), self.settings.max_avatars)
        return True

    def _wait_running(self, instance: Instance, deadline: float) -> Instance:
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
                raise Unavailable(f"avatar {instance.avatar!r} is not ready after {self.start_wait:g} s "
                                  f"(STARTUP_TIMEOUT={self.settings.startup_timeout:g}; state "
                                  f"{current.state.value})")
            time.sleep(POLL)

    # --- the rest ------------------------------------------------------------------------------

    def forget_failed(self, avatar: str) -> None:
        """Drop a FAILED record, which holds nothing (for deleting its avatar)."""
        self.store.remove(avatar, State.FAILED)

    def find(self, key: str) -> Instance:
        valid_name(key)
        instance = self.store.get(key)
        if instance is None and avatar_of(key) != key:
            instance = self.store.get(avatar_of(key))  # a joiner's id: g_user_8 -> avatar g
        if instance is None:
            raise NotFound(f"no instance named {key!r}")
        return instance

    def disconnect(self, key: str) -> Instance:
        return self.store.disconnect(self.find(key).avatar, time.time())

    def stop(self, key: str, force: bool = True) -> Instance | None:
        """force: stop now whatever the connections; else as a disconnect (the seed's semantics).
        Returns None once stopped, or the instance that stays up. A joiner's id (demo_user_2 on
        demo_user_1's instance) may leave (force false) but not stop everyone's instance."""
        instance = self.find(key)
        if force and key not in (instance.avatar, instance.instance_id):
            raise Conflict(f"{key!r} is a user of instance {instance.instance_id!r} (avatar {instance.avatar!r}), "
                           f"which others may share: stop it as {instance.instance_id!r} or {instance.avatar!r}, "
                           f"or leave it with /avatar/disconnect")
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
        deadline = time.monotonic() + self.start_wait
        if not self.store.transition(instance.avatar, restarting, State.STOPPING, restart=True):
            raise NotFound(f"no instance named {key!r}")
        return self._wait_running(instance, deadline)

    def list(self, everything: bool = False) -> list[Instance]:
        """The instances that serve (a port and a process), or every record (FAILED ones too)."""
        instances = self.store.list()
        return instances if everything else [i for i in instances if i.port and i.pid]
