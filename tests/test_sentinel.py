"""REDIS_URL on Redis Sentinel, with real processes on loopback: a primary, a replica and three
Sentinels (quorum 2). The store waits for a replica after every write (WAIT 1), so a failover
loses no write it acknowledged; with one replica, the new primary takes writes again once the old
one is back as its replica (Sentinel demotes it), and until then the store says StoreError."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path

import pytest
import redis
from redis.connection import SSLConnection
from redis.sentinel import SentinelManagedConnection

from harness.ports import free_port
from harness.processes import end, wait_for
from harness.redis import start_redis

from avatar_manager.hosts import Host
from avatar_manager.instances import Instance, State
from avatar_manager.placement import Claim
from avatar_manager.settings import ConfigError, Settings
from avatar_manager.store.base import StoreError
from avatar_manager.store.redis import RedisStore
from avatar_manager.store.redis_client import connect

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "mymaster"
NOW = 1_000_000.0
PORTS = list(range(20000, 21000))
RECORD_FIELDS = {f.name for f in fields(Instance)}


def claim(avatar: str) -> Claim:
    host = Host(id="h1", address="127.0.0.1", public_host="127.0.0.1", max_instances=len(PORTS), ports=PORTS,
                gpus=[])
    return Claim(avatar=avatar, instance_id=f"id_{avatar}", token=f"token_{avatar}", now=NOW, hosts=[host],
                 min_free_mb=0, gpu_required=False)


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)


def answers(check) -> bool:
    """check() is true; a server (or the store) not answering yet is false."""
    try:
        return bool(check())
    except (redis.RedisError, OSError, StoreError):
        return False


class Cluster:
    """redis-server processes (data and Sentinel), each with a folder of its own; stop() ends
    and reaps every one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[int, subprocess.Popen] = {}  # by port
        self.logs = []
        self.sentinels: list[int] = []

    def _run(self, port: int, argv: list[str]) -> None:
        log = open(self.folder / f"{port}.log", "ab")
        self.logs.append(log)
        self.procs[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def start_server(self, port: int | None = None, *args: str) -> int:
        port = port or free_port()
        data = self.folder / f"data-{port}-{uuid.uuid4().hex[:6]}"
        # A replica syncs at once, not after 5 s.
        self.procs[port] = start_redis(data, port, "127.0.0.1", "--repl-diskless-sync-delay", "0", *args)
        return port

    def start_sentinel(self, primary: int) -> int:
        port = free_port()
        conf = self.folder / f"sentinel-{port}.conf"  # Sentinel rewrites it: a file of its own
        # Down after 2 s: more than Sentinel's 1 s between PINGs, or a just-promoted primary can be
        # judged down before its first PONG (and failed over again).
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                        f"sentinel down-after-milliseconds {SERVICE} 2000\n"
                        f"sentinel failover-timeout {SERVICE} 2000\n")
        self._run(port, [shutil.which("redis-server"), str(conf), "--sentinel"])
        self.sentinels.append(port)
        return port

    def start(self) -> None:
        self.first = self.start_server()
        self.replica = self.start_server(None, "--replicaof", "127.0.0.1", str(self.first))
        wait_for(lambda: answers(lambda: client(self.replica).info("replication")["master_link_status"] == "up"),
                 10, "the replica to sync")
        for _ in range(3):
            self.start_sentinel(self.first)

        def ready(port: int) -> bool:
            state = client(port).sentinel_master(SERVICE)
            return state["num-slaves"] == 1 and state["num-other-sentinels"] == 2
        wait_for(lambda: all(answers(lambda: ready(s)) for s in self.sentinels), 20, "the Sentinels to know everyone")

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(f'127.0.0.1:{s}' for s in self.sentinels)}/{SERVICE}"

    def primary(self) -> int | None:
        """The primary's port, once every Sentinel names the same one."""
        try:
            named = {client(s).sentinel_get_master_addr_by_name(SERVICE) for s in self.sentinels}
        except redis.RedisError:
            return None
        return named.pop()[1] if len(named) == 1 else None

    def has_a_replica(self, port: int) -> bool:
        info = client(port).info("replication")
        return info["role"] == "master" and any(
            info.get(f"slave{i}", {}).get("state") == "online" for i in range(info["connected_slaves"]))

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            end(proc)
        for log in self.logs:
            log.close()


@pytest.fixture
def cluster(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; the Sentinel tests need it (apt-get install redis-server)")
    started = Cluster(tmp_path)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def test_a_store_on_sentinel_writes_to_the_primary_and_answers_once_the_replica_has_it(cluster):
    store = RedisStore(cluster.url, prefix="t:")
    try:
        assert store._redis.connection_pool.get_master_address() == ("127.0.0.1", cluster.first)
        store.ping()
        waits = client(cluster.first).info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
        instance, created = store.claim(claim("alice"))
        assert created and instance.port == PORTS[0]
        assert store.get("alice") == instance
        running = store.transition("alice", {State.STARTING}, State.RUNNING)
        assert running.state == State.RUNNING and store.get("alice") == running
        # WAIT ran after the claim and the transition, and the replica had each when the store answered.
        assert client(cluster.first).info("commandstats")["cmdstat_wait"]["calls"] >= waits + 2
        assert client(cluster.replica).hgetall("t:inst:alice") == running.to_record()
        assert store.remove("alice", State.RUNNING) and store.get("alice") is None
        assert client(cluster.replica).exists("t:inst:alice") == 0
    finally:
        store.close()


def test_a_write_no_replica_acknowledges_is_a_store_error_in_bounded_time(cluster):
    store = RedisStore(cluster.url, prefix="t:")
    replica = cluster.procs[cluster.replica]
    try:
        store.claim(claim("alice"))
        os.kill(replica.pid, 19)  # SIGSTOP: connected, silent
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="no replica acknowledged"):
                store.claim(claim("bob"))
            assert time.monotonic() - started < 5
            # A StoreError does not say the write did not happen: it is on the primary, unconfirmed.
            assert client(cluster.first).exists("t:inst:bob") == 1
        finally:
            os.kill(replica.pid, 18)  # SIGCONT
        wait_for(lambda: answers(lambda: store.claim(claim("carol"))), 20, "writes to be acknowledged again")
        assert {i.avatar for i in store.list()} >= {"alice", "carol"}
    finally:
        store.close()


def test_a_connection_left_on_the_demoted_primary_moves_to_the_new_one(cluster):
    """redis-py alone reconnects a dropped connection to its old address (redis/redis-py#3874):
    a WATCH/MULTI on the demoted primary would then fail READONLY on every try."""
    store = RedisStore(cluster.url, prefix="t:")
    try:
        store.claim(claim("alice"))  # leaves a connection to the primary in the pool
        old = cluster.first
        client(cluster.sentinels[0]).sentinel_failover(SERVICE)
        new = wait_for(lambda: cluster.primary() not in (None, old) and cluster.primary(), 30,
                       "Sentinel to promote the replica")
        client(old).replicaof("127.0.0.1", new)  # demoted now, rather than when Sentinel gets to it
        wait_for(lambda: answers(lambda: cluster.has_a_replica(new)), 30, "the old primary to follow the new one")
        started = time.monotonic()
        instance, created = store.claim(claim("bob"))
        assert created and time.monotonic() - started < 5
        assert store._redis.connection_pool.get_master_address() == ("127.0.0.1", new)
        assert client(new).exists("t:inst:alice", "t:inst:bob") == 2
    finally:
        store.close()


@pytest.mark.parametrize("how", ["kill the primary", "SENTINEL FAILOVER"])
def test_a_failover_during_claims_loses_no_acknowledged_claim(cluster, how):
    """Threads claim distinct avatars throughout; the primary fails over midway. Every claim the
    store acknowledged is in the new primary with its port; every other one was a StoreError."""
    store = RedisStore(cluster.url, prefix="t:")
    old = cluster.first
    outcomes: list[tuple[float, str, object]] = []  # (started, avatar, Instance or the exception)
    lock, stop = threading.Lock(), threading.Event()

    def claimer(n: int) -> None:
        for i in range(10**6):
            if stop.is_set():
                return
            avatar, started = f"a{n}-{i}", time.monotonic()
            try:
                result = store.claim(claim(avatar))[0]
            except Exception as exc:  # checked below: StoreError only
                result = exc
            with lock:
                outcomes.append((started, avatar, result))
            if isinstance(result, Exception):
                time.sleep(0.05)  # not a busy loop while the primary is down

    def successes(since: float = 0.0) -> int:
        with lock:
            return sum(1 for started, _, r in outcomes if started >= since and isinstance(r, Instance))

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: successes() >= 20, 30, "claims before the failover")
        if how == "kill the primary":
            cluster.kill(old)
        else:
            client(cluster.sentinels[0]).sentinel_failover(SERVICE)
        new = wait_for(lambda: cluster.primary() not in (None, old) and cluster.primary(), 30,
                       "Sentinel to promote the replica")
        if how == "kill the primary":
            # Back as a replica: restarted empty as a primary, Sentinel could promote it and wipe the data.
            cluster.start_server(old, "--replicaof", "127.0.0.1", str(new))
        wait_for(lambda: answers(lambda: cluster.has_a_replica(new)), 60, "the old primary to follow the new one")
        recovered = time.monotonic()
        wait_for(lambda: successes(recovered) >= 20, 60, "claims after the failover")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        store.close()
    assert not any(thread.is_alive() for thread in threads)

    assert new == cluster.replica != old
    errors = [r for _, _, r in outcomes if isinstance(r, Exception)]
    assert all(isinstance(e, StoreError) for e in errors), {type(e).__name__ for e in errors}
    acknowledged = {avatar: r for _, avatar, r in outcomes if isinstance(r, Instance)}

    primary = client(new)
    keys = set(primary.scan_iter("t:inst:*", count=1000))
    records = {key.removeprefix("t:inst:"): primary.hgetall(key) for key in keys}
    lost = sorted(set(acknowledged) - set(records))
    assert not lost, f"{len(lost)} acknowledged claims lost: {lost[:10]}"
    for avatar, instance in acknowledged.items():
        kept = Instance.from_record(records[avatar])
        assert (kept.port, kept.instance_id, kept.token) == (instance.port, instance.instance_id, instance.token)
    assert all(set(record) == RECORD_FIELDS for record in records.values()), "a record is half-written"
    assert primary.smembers("t:avatars") == set(records)
    ports = [int(record["port"]) for record in records.values()]
    assert len(ports) == len(set(ports)), "two instances hold one port"
    print(f"{how}: {len(acknowledged)} claims acknowledged, {len(errors)} StoreErrors, {len(records)} records")


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel://:hunter2@127.0.0.1:26379", "names no Sentinel service"),
    ("redis+sentinel://:hunter2@127.0.0.1:port/mymaster", "Sentinel address '127.0.0.1:port' that is not host:port"),
    ("redis+sentinel://:hunter2@/mymaster", "names no Sentinel"),
    ("redis+sentinel://:hunter2@127.0.0.1,/mymaster", "names no Sentinel"),
    ("redis+sentinel://:hunter2@127.0.0.1/mymaster/zero", "expected /SERVICE_NAME or /SERVICE_NAME/DB"),
    ("redis+sentinel://:hunter2@127.0.0.1/mymaster?password=x", "unknown parameter(s) password"),
    ("sentinel://:hunter2@127.0.0.1/mymaster", "must start with redis://"),
])
def test_a_bad_sentinel_url_is_refused_with_what_is_wrong(url, message):
    with pytest.raises(ConfigError) as failure:
        Settings.from_env({"REDIS_URL": url})
    assert str(failure.value).startswith("REDIS_URL ") and message in str(failure.value)
    assert "hunter2" not in str(failure.value)
    with pytest.raises(StoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RedisStore(url)


def test_the_manager_stops_at_start_on_a_bad_sentinel_url(tmp_path):
    env = {**os.environ, "AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs"),
           "REDIS_URL": "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380"}
    run = subprocess.run([sys.executable, "-m", "avatar_manager"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "avatar_manager: REDIS_URL names no Sentinel service: add /SERVICE_NAME after the hosts "
        "(e.g. redis+sentinel://host1:26379,host2:26379/mymaster)"]


def test_a_sentinel_nobody_answers_is_a_store_error_without_the_password():
    port = free_port()  # closed again: nothing listens there
    store = RedisStore(f"redis+sentinel://:hunter2@127.0.0.1:{port}/{SERVICE}?sentinel_password=hunter3")
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"No master found for '{SERVICE}'") as failure:
        store.ping()
    assert time.monotonic() - started < 5
    assert "hunter2" not in str(failure.value) and "hunter3" not in str(failure.value)
    store.close()


def test_rediss_sentinel_speaks_tls_to_the_sentinels_and_to_redis():
    client = connect("rediss+sentinel://u:p%40ss@198.18.0.1:1,198.18.0.2/svc/3?sentinel_password=s", 1.0)
    pool = client.connection_pool
    assert issubclass(pool.connection_class, SentinelManagedConnection)
    assert issubclass(pool.connection_class, SSLConnection)
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("svc", 3)
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == ("u", "p@ss")
    sentinels = [s.connection_pool.connection_kwargs for s in client.sentinel.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("198.18.0.1", 1), ("198.18.0.2", 26379)]
    assert all(s["password"] == "s" for s in sentinels)
    assert all(s.connection_pool.connection_class is SSLConnection for s in client.sentinel.sentinels)
    client.close()
