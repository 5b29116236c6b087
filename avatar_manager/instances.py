"""An avatar instance as the store records it, and its lifecycle states.

STARTING -> RUNNING -> STOPPING -> STOPPED; a crash (or a failed restart): RUNNING (STARTING) ->
EXITED -> BACKOFF -> STARTING; a first start that fails, or too many failures in a row: FAILED
(stays down until /avatar/restart). Its host lost: LOST -> STARTING on another host (or FAILED
when none has room). A start replaces a record that
is down (FAILED, STOPPED, EXITED) with a new STARTING one.
One record per avatar name: users who pick the same avatar share its instance.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from enum import Enum


class State(str, Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    EXITED = "EXITED"
    BACKOFF = "BACKOFF"
    FAILED = "FAILED"
    LOST = "LOST"         # its host stopped renewing its lease: to be placed again on another


# Every move between states; a record may also stay in its state while its fields change.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.STOPPING, State.EXITED, State.FAILED, State.LOST}),
    State.RUNNING: frozenset({State.STOPPING, State.EXITED, State.LOST}),
    State.STOPPING: frozenset({State.STOPPED, State.STARTING}),  # STARTING: a restart
    State.STOPPED: frozenset({State.STARTING}),
    State.EXITED: frozenset({State.BACKOFF, State.FAILED, State.STOPPING, State.STARTING, State.LOST}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPING, State.LOST}),
    State.FAILED: frozenset({State.STOPPING, State.STARTING}),
    State.LOST: frozenset({State.STARTING, State.FAILED, State.STOPPING}),  # STARTING: on another host
}


def check_transition(sources, to: State) -> None:
    """ValueError unless every state in `sources` may move to `to`."""
    illegal = [s.value for s in sources if s != to and to not in TRANSITIONS[s]]
    if illegal:
        raise ValueError(f"no transition from {', '.join(sorted(illegal))} to {to.value}")


# A start joins an instance in these states; it waits for STOPPING to finish, and replaces the rest.
JOINABLE = frozenset({State.STARTING, State.RUNNING, State.BACKOFF, State.LOST})
# These hold a port (and count against MAX_AVATARS).
HOLDS_PORT = frozenset({State.STARTING, State.RUNNING, State.STOPPING, State.EXITED, State.BACKOFF})


@dataclass
class Instance:
    avatar: str               # the avatar's name (real_avatar_name), the record's key
    instance_id: str          # the avatar_id of the start that created it, e.g. "g_user_7"
    state: State
    port: int
    gpu: int                  # -1: CPU
    reserved_mb: int          # GPU memory it needs, counted as taken until its host measures it (placement)
    token: str                # the worker's /health must answer with it
    connections: int
    created: float            # wall-clock seconds
    pid: int = 0
    pid_started: float = 0.0  # the process's start time, so a reused pid is not mistaken for it
    ready_at: float = 0.0
    idle_since: float = 0.0   # when connections last reached 0
    error: str = ""
    restart: bool = False     # STOPPING on the way to STARTING again
    failures: int = 0         # crashes and failed restarts since it last stayed up
    retry_at: float = 0.0     # BACKOFF ends
    sessions: int = 0         # live WebRTC sessions, as the worker's /health last said
    active_at: float = 0.0    # the last join, or the last health check that saw a live session
    restarts: int = 0         # times the worker was started again: after crashes, and on request
    host: str = ""            # the id of the host it is placed on ("": a record from before hosts)
    address: str = ""         # where the API and its host agent reach the worker ("": 127.0.0.1)
    public_host: str = ""     # where clients reach it, URL-ready ("": the API's PUBLIC_HOST)
    gpu_required: bool = False  # its engine cannot run on the CPU (placing it again needs a GPU)

    def to_record(self) -> dict[str, str]:
        """Flat strings, for Redis hashes."""
        return {k: record_value(v) for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict) -> "Instance":
        kinds = {f.name: f.type for f in fields(cls)}
        values = {}
        for name, kind in kinds.items():
            if name not in record:
                continue  # written before the field existed: its default
            raw = record[name]
            if kind == "State":
                values[name] = State(raw)
            elif kind == "int":
                values[name] = int(raw)
            elif kind == "float":
                values[name] = float(raw)
            elif kind == "bool":
                values[name] = bool(int(raw))
            else:
                values[name] = str(raw)
        return cls(**values)

    @property
    def url(self) -> str:
        """The worker's HTTP API, as the manager reaches it."""
        return f"http://{url_host(self.address or LOCAL)}:{self.port}"

    def to_api(self, public_host: str) -> dict:
        """The seed manager's instance fields, plus the lifecycle state and the last error.
        `public_host`: where clients reach a worker of a record that does not say (from before
        hosts), URL-ready (settings.public_host, never a request's Host header, which any client
        may forge)."""
        now = time.time()
        host = self.public_host or public_host
        return {
            "avatar_id": self.instance_id,
            "real_avatar_name": self.avatar,
            "port": self.port or None,
            "gpu": self.gpu,
            "pid": self.pid or None,
            "state": self.state.value,
            "running": self.state == State.RUNNING,
            "start_time": datetime.fromtimestamp(self.created, timezone.utc).isoformat(),
            "uptime_seconds": round(now - self.ready_at, 1) if self.ready_at else 0.0,
            "webrtc_url": f"http://{host}:{self.port}/offer" if self.port else None,
            "connections": self.connections,
            "sessions": self.sessions,
            "restarts": self.restarts,
            "error": self.error or None,
            "host": self.host or None,
        }


LOCAL = "127.0.0.1"


def url_host(address: str) -> str:
    """An address as it goes into a URL: an IPv6 one in brackets."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def record_value(value: object) -> str:
    """One field as a flat string (Instance.to_record; the Redis store's partial updates)."""
    if isinstance(value, State):
        return value.value
    return str(int(value) if isinstance(value, bool) else value)


# How users are counted: one rule for both stores (each applies it atomically).

def joining(now: float) -> tuple[dict[str, int], dict[str, float]]:
    """What one more user adds to a record, and what it sets: in use, so not idle. A store applies
    it as one atomic increment (the hot path of every warm start); `joined` in Python."""
    return {"connections": 1}, {"idle_since": 0.0, "active_at": now}


def joined(instance: Instance, now: float) -> Instance:
    """The record after one more user joined it."""
    added, changes = joining(now)
    return replace(instance, **{k: getattr(instance, k) + n for k, n in added.items()}, **changes)


def left(instance: Instance, now: float) -> Instance:
    """The record after a user left it: never below 0 users; idle from the moment the last one left."""
    connections = max(0, instance.connections - 1)
    idle_since = now if connections == 0 and instance.connections > 0 else instance.idle_since
    return replace(instance, connections=connections, idle_since=idle_since)
