"""The store in one SQLite file: every step is one BEGIN IMMEDIATE transaction, so any number of
threads and processes on this host allocate without races.

A file deleted or replaced under a running manager is noticed (the path names another file, or
none) and opened afresh, its schema created; the supervisor then re-registers the live workers.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Iterator

from ..instances import HOLDS_PORT, JOINABLE, Instance, State
from .base import Busy, CapacityError, Claim, Full, NotFound, Store, StoreError, place_on_gpu

_COLUMNS = [f.name for f in fields(Instance)]
_TYPES = {"int": "INTEGER", "float": "REAL", "bool": "INTEGER"}
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS instances ("
    + ", ".join(f"{f.name} {_TYPES.get(f.type, 'TEXT')} NOT NULL" for f in fields(Instance))
    + ", PRIMARY KEY (avatar))",
    "CREATE TABLE IF NOT EXISTS lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS docs (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
    "expires REAL NOT NULL, PRIMARY KEY (kind, key))",
]


_LOCK_TIMEOUT = 30.0  # seconds, as long as a transaction waits for SQLite's own lock


def _identity(path: Path) -> str:
    """Which file the path names now ("" for none): device and inode."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return ""
    return f"{stat.st_dev}:{stat.st_ino}"


def _lock(file, timeout: float) -> None:
    """An exclusive flock on `file`, waited for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{file.name} stayed locked for {timeout:g} s") from None
            time.sleep(0.01)


def _literal(value) -> str:
    return repr(int(value) if isinstance(value, bool) else value)


def _in(states) -> str:
    return ",".join(f"'{State(s).value}'" for s in states)


class SqliteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Names the file whose -wal and -shm are the current ones; locked while a file is opened.
        self._opened = self.path.with_name(self.path.name + "-opened")
        self._local = threading.local()
        # Writers of this process queue here rather than in SQLite's busy handler, which sleeps
        # up to 100 ms between tries; other processes still wait in the busy handler.
        self._writer = threading.Lock()
        self._file = ""  # the file this process has opened (and made the schema in)
        try:
            self._local.db, self._local.file = self._open()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        self._local.pid = os.getpid()

    def _open(self) -> tuple[sqlite3.Connection, str]:
        """A connection to the file the path names now; a file this process has not opened yet
        (it is new, or replaced the one we had) is created if need be, with the schema.

        The -wal and -shm beside a file that was deleted or replaced belong to the old file (its
        connections in other processes still use them) and SQLite would read them as the new
        file's: the first of our processes to open the new file deletes them. Which file that was
        is written down, under a lock, so a later process does not delete the new file's own.
        Where nothing is written down yet (a store from before this rule) nothing is deleted: the
        -wal may hold transactions of this very file not yet copied into it, which SQLite recovers."""
        file = _identity(self.path)
        if file and file == self._file:
            return self._connect(), file
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._opened, "a+") as opened:
                _lock(opened, _LOCK_TIMEOUT)
                with open(self.path, "ab"):
                    pass
                file = _identity(self.path)
                opened.seek(0)
                known = opened.read()
                if known != file:
                    if known:
                        for suffix in ("-wal", "-shm"):
                            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
                    opened.truncate(0)
                    opened.write(file)
                    opened.flush()
                db = self._connect()
                try:
                    self._create_schema(db)
                except BaseException:
                    db.close()
                    raise
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        self._file = file
        return db, file

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_LOCK_TIMEOUT, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _create_schema(self, db: sqlite3.Connection) -> None:
        with self._writer:
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    db.execute(statement)
                # A store written by an older version lacks the newer fields: add them with their defaults.
                present = {row["name"] for row in db.execute("PRAGMA table_info(instances)")}
                for f in fields(Instance):
                    if f.name not in present:
                        db.execute(f"ALTER TABLE instances ADD COLUMN {f.name} {_TYPES.get(f.type, 'TEXT')} "
                                   f"NOT NULL DEFAULT {_literal(f.default)}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread and per process (a connection must not cross a fork), to the
        # file the path names now: one stat a step notices a file deleted or replaced under us.
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid() or self._local.file != _identity(self.path):
            if db is not None and self._local.pid == os.getpid():
                db.close()
            self._local.db = None
            self._local.db, self._local.file = self._open()
            self._local.pid = os.getpid()
        return self._local.db

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        try:
            db = self._connection()
            with self._writer if write else nullcontext():
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    @staticmethod
    def _row(db: sqlite3.Connection, key: str) -> Instance | None:
        row = db.execute("SELECT * FROM instances WHERE avatar = ?", (key,)).fetchone()
        if row is None:
            row = db.execute("SELECT * FROM instances WHERE instance_id = ? ORDER BY created, avatar LIMIT 1",
                             (key,)).fetchone()
        return Instance.from_record(dict(row)) if row else None

    @staticmethod
    def _update(db: sqlite3.Connection, avatar: str, changes: dict) -> None:
        if changes:
            unknown = set(changes) - set(_COLUMNS)
            if unknown:
                raise StoreError(f"no such instance field(s): {', '.join(sorted(unknown))}")
            values = [v.value if isinstance(v, State) else v for v in changes.values()]
            db.execute(f"UPDATE instances SET {', '.join(f'{k} = ?' for k in changes)} WHERE avatar = ?",
                       [*values, avatar])

    def ping(self) -> None:
        with self._tx(write=False) as db:
            db.execute("SELECT 1").fetchone()

    def join(self, avatar: str, now: float) -> Instance | None:
        # One autocommit statement: SQLite holds its write lock only inside one sqlite3_step (with
        # the GIL released), not across Python steps while other writers sleep in its busy handler.
        # RETURNING: the row as this join left it (a read after it could see later joins' counts).
        try:
            db = self._connection()  # before the writer lock: opening a connection takes it too
            with self._writer:
                row = db.execute(
                    f"UPDATE instances SET connections = connections + 1, idle_since = 0, active_at = ? "
                    f"WHERE avatar = ? AND state IN ({_in(JOINABLE)}) RETURNING *", (now, avatar)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        return Instance.from_record(dict(row)) if row else None

    def _join(self, db: sqlite3.Connection, avatar: str, now: float) -> Instance | None:
        cur = db.execute(f"UPDATE instances SET connections = connections + 1, idle_since = 0, active_at = ? "
                         f"WHERE avatar = ? AND state IN ({_in(JOINABLE)})", (now, avatar))
        return self._row(db, avatar) if cur.rowcount else None

    def claim(self, claim: Claim) -> tuple[Instance, bool]:
        with self._tx() as db:
            joined = self._join(db, claim.avatar, claim.now)
            if joined:
                return joined, False
            old = db.execute("SELECT state FROM instances WHERE avatar = ?", (claim.avatar,)).fetchone()
            if old and State(old["state"]) == State.STOPPING:
                raise Busy(claim.avatar)
            held = db.execute(f"SELECT avatar, port, gpu, reserved_mb, state FROM instances "
                              f"WHERE state IN ({_in(HOLDS_PORT)}) AND avatar != ?", (claim.avatar,)).fetchall()
            if len(held) >= claim.max_instances:
                raise Full(f"all MAX_AVATARS={claim.max_instances} instances are in use")
            taken = {r["port"] for r in held}
            port = next((p for p in claim.ports if p not in taken), None)
            if port is None:
                raise CapacityError("no free port in the avatar port range (AVATAR_BASE_PORT .. + MAX_AVATARS)")
            reserved: dict[int, int] = {}
            for r in held:
                if r["state"] == State.STARTING.value:
                    reserved[r["gpu"]] = reserved.get(r["gpu"], 0) + r["reserved_mb"]
            gpu = place_on_gpu(claim, reserved)
            instance = Instance(avatar=claim.avatar, instance_id=claim.instance_id, state=State.STARTING,
                                port=port, gpu=gpu, reserved_mb=claim.min_free_mb if gpu >= 0 else 0,
                                token=claim.token, connections=1, created=claim.now, active_at=claim.now)
            record = instance.to_record()
            db.execute(f"INSERT OR REPLACE INTO instances ({', '.join(_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(_COLUMNS))})", [record[c] for c in _COLUMNS])
            return instance, True

    def restore(self, instance: Instance, max_instances: int) -> bool:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM instances WHERE avatar = ?", (instance.avatar,)).fetchone():
                return False
            held = db.execute(f"SELECT port FROM instances WHERE state IN ({_in(HOLDS_PORT)})").fetchall()
            if len(held) >= max_instances or instance.port in {r["port"] for r in held}:
                return False
            record = instance.to_record()
            db.execute(f"INSERT INTO instances ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                       [record[c] for c in _COLUMNS])
            return True

    def get(self, key: str) -> Instance | None:
        with self._tx(write=False) as db:
            return self._row(db, key)

    def list(self) -> list[Instance]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT * FROM instances ORDER BY created, avatar").fetchall()
        return [Instance.from_record(dict(r)) for r in rows]

    def disconnect(self, key: str, now: float, token: str | None = None) -> Instance:
        with self._tx() as db:
            instance = self._row(db, key)
            if instance is None:
                raise NotFound(key)
            if token is not None and instance.token != token:
                return instance
            connections = max(0, instance.connections - 1)
            idle_since = now if connections == 0 and instance.connections > 0 else instance.idle_since
            self._update(db, instance.avatar, {"connections": connections, "idle_since": idle_since})
            return self._row(db, instance.avatar)

    def _transition(self, avatar, allowed, to, **changes) -> Instance | None:
        with self._tx() as db:
            cur = db.execute(f"UPDATE instances SET state = ? WHERE avatar = ? AND state IN ({_in(allowed)})",
                             (State(to).value, avatar))
            if not cur.rowcount:
                return None
            self._update(db, avatar, changes)
            return self._row(db, avatar)

    def stop_if_idle(self, avatar: str, idle_before: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE instances SET state = ? WHERE avatar = ? AND state = ? AND connections = 0 "
                             "AND sessions = 0 AND idle_since > 0 AND idle_since <= ?",
                             (State.STOPPING.value, avatar, State.RUNNING.value, idle_before))
            return bool(cur.rowcount)

    def remove(self, avatar: str, state: State) -> bool:
        with self._tx() as db:
            return bool(db.execute("DELETE FROM instances WHERE avatar = ? AND state = ?",
                                   (avatar, State(state).value)).rowcount)

    def take_lease(self, holder: str, ttl: float, now: float) -> bool:
        with self._tx() as db:
            db.execute("INSERT INTO lease (name, holder, expires) VALUES ('supervisor', ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires "
                       "WHERE lease.holder = excluded.holder OR lease.expires < ?", (holder, now + ttl, now))
            row = db.execute("SELECT holder FROM lease WHERE name = 'supervisor'").fetchone()
            return row["holder"] == holder

    def drop_lease(self, holder: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM lease WHERE name = 'supervisor' AND holder = ?", (holder,))

    def lease_holder(self, now: float) -> str | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT holder FROM lease WHERE name = 'supervisor' AND expires >= ?",
                             (now,)).fetchone()
        return row["holder"] if row else None

    def add_counts(self, counts: dict[str, float]) -> None:
        with self._tx() as db:
            db.executemany("INSERT INTO counts (name, value) VALUES (?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", counts.items())

    def counts(self) -> dict[str, float]:
        with self._tx(write=False) as db:
            return {r["name"]: r["value"] for r in db.execute("SELECT name, value FROM counts")}

    def put_doc(self, kind: str, key: str, value: dict) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO docs (kind, key, value, expires) VALUES (?, ?, ?, 0)",
                       (kind, key, json.dumps(value)))

    def claim_doc(self, kind: str, key: str, value: dict, ttl: float, now: float) -> bool:
        with self._tx() as db:
            cur = db.execute("INSERT INTO docs (kind, key, value, expires) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT(kind, key) DO UPDATE SET value = excluded.value, expires = excluded.expires "
                             "WHERE docs.expires > 0 AND docs.expires < ?",
                             (kind, key, json.dumps(value), now + ttl, now))
            return bool(cur.rowcount)

    def get_doc(self, kind: str, key: str) -> dict | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT value FROM docs WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row["value"]) if row else None

    def list_docs(self, kind: str) -> list[dict]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT value FROM docs WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        return [json.loads(r["value"]) for r in rows]

    def delete_doc(self, kind: str, key: str) -> bool:
        with self._tx() as db:
            return bool(db.execute("DELETE FROM docs WHERE kind = ? AND key = ?", (kind, key)).rowcount)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
