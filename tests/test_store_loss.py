"""A store that loses its records while workers run (Redis restarted empty, the SQLite file
deleted or replaced): the supervisor re-registers the workers it can describe faithfully and
stops the rest, so no port stays held by a worker nobody knows of."""
from __future__ import annotations

import os
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from avatar_manager import ports
from avatar_manager.instances import Instance, State
from avatar_manager.hosts import Host
from avatar_manager.placement import Claim
from avatar_manager.store.redis import RedisStore
from avatar_manager.store.sqlite import SqliteStore
from harness.ports import free_port
from harness.processes import gone, wait_for
from harness.redis import start_redis

ROOT = Path(__file__).resolve().parent.parent


class RedisServer:
    """A redis-server of this test's own, which it can kill and start again, empty, on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> "RedisServer":
        self.runs += 1
        # A fresh directory: nothing to load at start.
        self.proc = start_redis(self.folder / f"run{self.runs}", self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def listed(m) -> dict[str, dict]:
    answer = m.get("/avatar/list")
    assert answer.status_code == 200, answer.text
    return {i["real_avatar_name"]: i for i in answer.json()["data"]}


def start_fleet(m, *names: str) -> dict[str, dict]:
    """Start each avatar (made with a plain config.json unless the test made it)."""
    started = {}
    for name in names:
        if not (m.data_dir / "avatars" / name).exists():
            m.avatar(name)
        answer = m.start_avatar(name)
        assert answer.status_code == 200, answer.text
        started[name] = answer.json()["data"]
    return started


def wait_listed(m, expected: dict[str, dict]) -> dict[str, dict]:
    """Until /avatar/list shows exactly these workers (same pid, same port)."""
    def seen():
        now = listed(m)
        return now if {a: (i["pid"], i["port"]) for a, i in now.items()} == \
            {a: (i["pid"], i["port"]) for a, i in expected.items()} else None
    return wait_for(seen, timeout=15, what=f"{sorted(expected)} listed again with their pids and ports")


def check_usable_and_stop_all(m, known: dict[str, dict]) -> None:
    """A new avatar starts, a known one is joined (not started twice), and stop-all stops every
    worker and frees every port."""
    wait_for(lambda: m.get("/ready").status_code == 200, timeout=10, what="/ready")
    m.avatar("fresh")
    fresh = m.start_avatar("fresh")
    assert fresh.status_code == 200, fresh.text
    fresh = fresh.json()["data"]
    assert fresh["port"] not in {i["port"] for i in known.values()}
    name, first = next(iter(known.items()))
    joined = m.start_avatar(f"{name}_user_2", name).json()["data"]
    assert joined["pid"] == first["pid"] and joined["is_new"] is False
    stopped = m.post("/avatar/stop-all", {})
    assert stopped.status_code == 200, stopped.text
    everyone = [*known.values(), fresh]
    wait_for(lambda: all(gone(i["pid"]) for i in everyone), timeout=15, what="every worker stopped")
    assert all(ports.wait_free(i["port"], 5) for i in everyone)
    assert listed(m) == {}


def test_redis_restarted_empty_the_running_workers_are_registered_again(manager, own_redis):
    m = manager(WORKER_MODULE="tests.fake_worker", REDIS_URL=own_redis.url, MAX_AVATARS=3)
    before = start_fleet(m, "a", "b")
    own_redis.kill()
    own_redis.start()
    assert redis.Redis.from_url(own_redis.url).dbsize() <= 1  # empty (the lease may be back already)
    again = wait_listed(m, before)
    assert again["a"]["state"] == "RUNNING" and again["a"]["connections"] == 0
    # The worker's own /health agrees with the record rebuilt from it.
    health = requests.get(f"http://127.0.0.1:{again['a']['port']}/health", timeout=2).json()
    assert health["pid"] == again["a"]["pid"] and health["avatar"] == "a"
    check_usable_and_stop_all(m, before)


def test_the_sqlite_file_deleted_the_running_workers_are_registered_again(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", MAX_AVATARS=3)
    before = start_fleet(m, "a", "b")
    (m.data_dir / "manager.sqlite3").unlink()
    wait_listed(m, before)
    check_usable_and_stop_all(m, before)


def empty_store_file(path: Path) -> Path:
    """A store file with the schema and no records, its WAL folded in (as a copied backup is)."""
    store = SqliteStore(path)
    store.close()
    assert not Path(f"{path}-wal").exists()
    return path


def test_the_sqlite_file_replaced_by_an_empty_store_the_running_workers_are_registered_again(manager, tmp_path):
    m = manager(WORKER_MODULE="tests.fake_worker", MAX_AVATARS=3)
    before = start_fleet(m, "a", "b")
    os.replace(empty_store_file(tmp_path / "empty.sqlite3"), m.data_dir / "manager.sqlite3")
    wait_listed(m, before)
    check_usable_and_stop_all(m, before)


def test_a_worker_whose_avatar_another_record_now_holds_is_stopped_and_its_port_freed(manager, tmp_path):
    m = manager(WORKER_MODULE="tests.fake_worker", MAX_AVATARS=3)
    before = start_fleet(m, "a", "b")
    # The new file records another instance of avatar a, waiting to start on the third port.
    replacement = SqliteStore(tmp_path / "other.sqlite3")
    third = next(p for p in range(m.base_port, m.base_port + 3) if p not in {i["port"] for i in before.values()})
    here = Host(id=socket.gethostname(), address="127.0.0.1", public_host="127.0.0.1", max_instances=3,
                ports=[third], gpus=[])
    replacement.claim(Claim(avatar="a", instance_id="a", token="another-token", now=time.time(), hosts=[here],
                            min_free_mb=0, gpu_required=False))
    replacement.close()
    os.replace(tmp_path / "other.sqlite3", m.data_dir / "manager.sqlite3")

    wait_for(lambda: gone(before["a"]["pid"]), timeout=15, what="the old worker of a stopped")
    assert ports.wait_free(before["a"]["port"], 5)
    now = wait_for(lambda: (seen := listed(m)) and seen.get("a", {}).get("state") == "RUNNING" and "b" in seen
                   and seen, timeout=15, what="a started as its new record says, b registered again")
    assert now["a"]["port"] == third and now["a"]["pid"] != before["a"]["pid"]
    assert (now["b"]["pid"], now["b"]["port"]) == (before["b"]["pid"], before["b"]["port"])
    assert m.post("/avatar/stop-all", {}).status_code == 200
    assert gone(now["a"]["pid"]) and gone(now["b"]["pid"])


def test_a_lost_worker_that_does_not_answer_as_itself_is_stopped_and_its_port_freed(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", MAX_AVATARS=3)
    m.avatar("frozen", fault="freeze_after:1")  # keeps its port, stops answering /health
    before = start_fleet(m, "frozen", "b")
    time.sleep(1.5)  # frozen now; its health checks (every 5 s, 3 misses) have not given up on it yet
    (m.data_dir / "manager.sqlite3").unlink()
    wait_for(lambda: gone(before["frozen"]["pid"]), timeout=20, what="the frozen worker stopped")
    assert ports.wait_free(before["frozen"]["port"], 5)
    assert set(wait_listed(m, {"b": before["b"]})) == {"b"}


def test_a_rebuilt_record_keeps_a_worker_with_a_live_session_from_idling_out(manager):
    """Connections are unknown after the loss (0), but the worker's live session protects it;
    one without a session idles out as usual."""
    m = manager(WORKER_MODULE="tests.fake_worker", MAX_AVATARS=3, IDLE_TIMEOUT="1", HEALTH_CHECK_INTERVAL="0.3")
    m.avatar("watched", sessions=1)
    m.avatar("idle")
    watched = m.start_avatar("watched").json()["data"]
    idle = m.start_avatar("idle").json()["data"]
    (m.data_dir / "manager.sqlite3").unlink()
    wait_for(lambda: gone(idle["pid"]), timeout=20, what="the worker without a session idled out")
    time.sleep(2)  # two idle timeouts more
    kept = listed(m)
    assert list(kept) == ["watched"] and kept["watched"]["pid"] == watched["pid"]
    assert kept["watched"]["sessions"] == 1 and kept["watched"]["connections"] == 0


# --- the stores themselves ----------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "store.sqlite3")
    else:
        url = request.getfixturevalue("redis_url")
        opened = RedisStore(url, prefix=f"loss-{os.getpid()}-{time.monotonic_ns()}:")
    yield opened
    opened.close()


def record(avatar: str, port: int, pid: int = 1234) -> Instance:
    return Instance(avatar=avatar, instance_id=avatar, state=State.RUNNING, port=port, gpu=-1, reserved_mb=0,
                    token=f"token-{avatar}", connections=0, created=1.0, pid=pid, pid_started=1.0, ready_at=1.0,
                    idle_since=2.0, sessions=1)


def test_restore_inserts_only_into_a_free_avatar_port_and_slot(store):
    assert store.restore(record("a", 9001), max_instances=2)
    assert store.get("a") == record("a", 9001)
    assert not store.restore(record("a", 9002, pid=99), max_instances=2)   # the avatar is recorded
    assert not store.restore(record("b", 9001), max_instances=2)           # its port is held
    assert store.restore(record("b", 9002), max_instances=2)
    assert not store.restore(record("c", 9003), max_instances=2)           # no slot left
    assert [i.avatar for i in store.list()] == ["a", "b"] and store.get("a").pid == 1234


CHILD = """
import sys
from avatar_manager.store.sqlite import SqliteStore
from test_store_loss import record
store = SqliteStore(sys.argv[1])
store.restore(record("child-old", 9100), 9)
print("ready", flush=True)
sys.stdin.readline()
print(",".join(sorted(i.avatar for i in store.list())), flush=True)
store.restore(record("child-new", 9101), 9)
print("wrote", flush=True)
sys.stdin.readline()
"""


def test_a_deleted_sqlite_file_is_reopened_by_every_process_that_uses_it(tmp_path):
    """The old file's -wal and -shm, still open in another process, are not read as the new
    file's; each process goes on with the new file."""
    path = tmp_path / "manager.sqlite3"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])})
    try:
        assert child.stdout.readline().strip() == "ready"
        here = SqliteStore(path)
        assert [i.avatar for i in here.list()] == ["child-old"]
        path.unlink()
        assert here.list() == []
        assert here.restore(record("parent", 9102), 9)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "parent"  # the child moved to the new file too
        assert child.stdout.readline().strip() == "wrote"
        assert [i.avatar for i in here.list()] == ["child-new", "parent"]
        here.close()
    finally:
        child.kill()
        child.wait(timeout=10)
