"""The store in one SQLite file: every write is one statement or one BEGIN IMMEDIATE transaction,
so any number of threads and processes on this host allocate without races.

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

from ..instances import Instance, State
from .base import Store, StoreError

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


def _value(value):
    """A field's value as SQLite stores it."""
    return value.value if isinstance(value, State) else value


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
    def _write(db: sqlite3.Connection, instance: Instance) -> None:
        record = instance.to_record()
        db.execute(f"INSERT OR REPLACE INTO instances ({', '.join(_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(_COLUMNS))})", [record[c] for c in _COLUMNS])

    def ping(self) -> None:
        with self._tx(write=False) as db:
            db.execute("SELECT 1").fetchone()

    def record(self, avatar: str) -> Instance | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT * FROM instances WHERE avatar = ?", (avatar,)).fetchone()
        return Instance.from_record(dict(row)) if row else None

    def list(self) -> list[Instance]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT * FROM instances ORDER BY created, avatar").fetchall()
        return [Instance.from_record(dict(r)) for r in rows]

    def _update(self, avatar, allowed, expect, add, changes) -> Instance | None:
        # One autocommit statement: SQLite holds its write lock only inside one sqlite3_step (with
        # the GIL released), not across Python steps while other writers sleep in its busy handler.
        # RETURNING: the row as this update left it (a read after it could see later changes).
        sets = [f"{k} = ?" for k in changes] + [f"{k} = {k} + ?" for k in add]
        where = ["avatar = ?"] + [f"{k} = ?" for k in expect]
        if allowed is not None:
            where.append(f"state IN ({_in(allowed)})")
        values = [_value(v) for v in (*changes.values(), *add.values(), avatar, *expect.values())]
        if not sets:
            return None
        try:
            db = self._connection()  # before the writer lock: opening a connection takes it too
            with self._writer:
                row = db.execute(f"UPDATE instances SET {', '.join(sets)} WHERE {' AND '.join(where)} RETURNING *",
                                 values).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        return Instance.from_record(dict(row)) if row else None

    def _atomically(self, decide):
        with self._tx() as db:
            rows = db.execute("SELECT * FROM instances ORDER BY created, avatar").fetchall()
            result, writes = decide([Instance.from_record(dict(r)) for r in rows])
            for instance in writes:
                self._write(db, instance)
            return result

    def remove(self, avatar: str, state: State) -> bool:
        with self._tx() as db:
            return bool(db.execute("DELETE FROM instances WHERE avatar = ? AND state = ?",
                                   (avatar, State(state).value)).rowcount)

    def clock(self) -> float:
        return time.time()  # one host: its clock is the store's

    def take_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        with self._tx() as db:
            db.execute("INSERT INTO lease (name, holder, expires) VALUES (?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires "
                       "WHERE lease.holder = excluded.holder OR lease.expires < ?", (name, holder, now + ttl, now))
            row = db.execute("SELECT holder FROM lease WHERE name = ?", (name,)).fetchone()
            return row["holder"] == holder

    def drop_lease(self, name: str, holder: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM lease WHERE name = ? AND holder = ?", (name, holder))

    def lease_holder(self, name: str, now: float | None = None) -> str | None:
        now = self.clock() if now is None else now
        with self._tx(write=False) as db:
            row = db.execute("SELECT holder FROM lease WHERE name = ? AND expires >= ?", (name, now)).fetchone()
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
