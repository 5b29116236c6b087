"""The store's behaviour, run against both backends: SqliteStore is the spec, RedisStore must match.

The Redis backend runs against a real redis-server child process (CI installs it)."""
from __future__ import annotations

import random
import re
import threading
import time
import uuid

import pytest

from harness.ports import free_port

from avatar_manager.instances import State
from avatar_manager.hosts import Host
from avatar_manager.placement import Busy, CapacityError, Claim, place_on_gpu
from avatar_manager.store.base import NotFound, StoreError
from avatar_manager.store.redis import RedisStore
from avatar_manager.store.sqlite import SqliteStore

NOW = 1_000_000.0
PORTS = [9000, 9001, 9002, 9003, 9004, 9005]


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "store.db")
    else:
        # A prefix per test keeps tests apart on the shared server.
        store = RedisStore(request.getfixturevalue("redis_url"), prefix=f"test-{uuid.uuid4().hex}:")
    yield store
    store.close()


def claim(avatar: str, instance_id: str | None = None, now: float = NOW, max_instances: int = 4,
          ports: list[int] = PORTS, gpus: list[tuple[int, int]] = (), min_free_mb: int = 6000,
          gpu_required: bool = False) -> Claim:
    host = Host(id="h1", address="127.0.0.1", public_host="127.0.0.1", max_instances=max_instances,
                ports=list(ports), gpus=list(gpus))
    return Claim(avatar=avatar, instance_id=instance_id or f"id_{avatar}", token=f"token_{avatar}", now=now,
                 hosts=[host], min_free_mb=min_free_mb, gpu_required=gpu_required)


def test_join_without_an_instance_is_none(store):
    assert store.join("alice", NOW) is None
    assert store.list() == []


def test_claim_creates_a_starting_instance_on_the_first_free_port(store):
    instance, created = store.claim(claim("alice"))
    assert created
    assert (instance.avatar, instance.instance_id, instance.state, instance.port) == ("alice", "id_alice",
                                                                                      State.STARTING, 9000)
    assert (instance.connections, instance.gpu, instance.reserved_mb, instance.created) == (1, -1, 0, NOW)
    assert instance.token == "token_alice" and instance.restart is False
    assert store.get("alice") == instance
    assert store.list() == [instance]


def test_a_second_claim_joins(store):
    first, _ = store.claim(claim("alice"))
    store.disconnect("alice", NOW + 1)
    second, created = store.claim(claim("alice", instance_id="other", now=NOW + 5))
    assert not created
    assert (second.port, second.instance_id, second.connections, second.idle_since) == (first.port, "id_alice", 1, 0)
    third, created = store.claim(claim("alice"))
    assert not created and third.connections == 2


def test_join_counts_a_connection_on_joinable_states_only(store):
    store.claim(claim("alice"))
    for state in (State.RUNNING, State.BACKOFF):
        store._transition("alice", {State.STARTING, State.RUNNING}, state)
        assert store.join("alice", NOW).state == state
    assert store.get("alice").connections == 3
    store._transition("alice", {State.BACKOFF}, State.EXITED)
    assert store.join("alice", NOW) is None
    assert store.get("alice").connections == 3


def test_capacity_is_max_instances(store):
    for name in ("a", "b", "c"):
        store.claim(claim(name, max_instances=3))
    with pytest.raises(CapacityError, match="all MAX_AVATARS=3 instances are in use"):
        store.claim(claim("d", max_instances=3))
    assert store.claim(claim("a", max_instances=3))[1] is False  # joining needs no room
    store._transition("b", {State.STARTING}, State.STOPPED)  # STOPPED holds no port
    assert store.claim(claim("d", max_instances=3))[0].port == 9001


def test_ports_skip_held_ones_and_come_from_the_candidates(store):
    assert store.claim(claim("a"))[0].port == 9000
    assert store.claim(claim("b", ports=[9000, 9003, 9001]))[0].port == 9003
    assert store.claim(claim("c", ports=[9002]))[0].port == 9002
    with pytest.raises(CapacityError, match="no free port"):
        store.claim(claim("d", ports=[9000, 9002, 9003]))
    assert store.claim(claim("d", ports=[9000, 9002, 9003, 7777]))[0].port == 7777
    store._transition("a", {State.STARTING}, State.FAILED)  # FAILED frees its port
    assert store.claim(claim("e"))[0].port == 9000


def test_busy_while_stopping(store):
    store.claim(claim("alice"))
    store.transition("alice", {State.STARTING}, State.STOPPING)
    with pytest.raises(Busy):
        store.claim(claim("alice"))
    assert store.join("alice", NOW) is None
    assert store.get("alice").connections == 1


@pytest.mark.parametrize("state", [State.EXITED, State.FAILED, State.STOPPED])
def test_a_dead_record_is_replaced(store, state):
    store.claim(claim("b"))
    old, _ = store.claim(claim("alice"))
    store._transition("alice", {State.STARTING}, state, error="boom", pid=42, restart=True)
    # The EXITED record's own port is free for its replacement; MAX counts other avatars only.
    new, created = store.claim(claim("alice", instance_id="new_id", now=NOW + 10, max_instances=2))
    assert created
    assert (new.state, new.instance_id, new.port, new.connections, new.created) == (State.STARTING, "new_id",
                                                                                    old.port, 1, NOW + 10)
    assert (new.error, new.pid, new.restart) == ("", 0, False)
    assert store.get("alice") == new and len(store.list()) == 2


def test_no_gpus_runs_on_the_cpu(store):
    instance, _ = store.claim(claim("a", gpus=[], gpu_required=True))
    assert (instance.gpu, instance.reserved_mb) == (-1, 0)


def test_gpu_with_the_most_free_memory(store):
    instance, _ = store.claim(claim("a", gpus=[(0, 7000), (1, 12000), (2, 9000)]))
    assert (instance.gpu, instance.reserved_mb) == (1, 6000)
    # A tie keeps the earlier GPU in the list.
    assert store.claim(claim("b", gpus=[(2, 8000), (0, 8000)]))[0].gpu == 2


def test_starting_instances_reserve_gpu_memory(store):
    gpus = [(0, 10000), (1, 9000)]
    assert store.claim(claim("a", gpus=gpus))[0].gpu == 0
    assert store.claim(claim("b", gpus=gpus))[0].gpu == 1
    third = store.claim(claim("c", gpus=gpus))[0]
    assert (third.gpu, third.reserved_mb) == (-1, 0)
    with pytest.raises(CapacityError, match=re.escape(
            "no GPU has GPU_MIN_FREE_MB=6000 MB free (free: GPU 0 4000 MB, GPU 1 3000 MB)")):
        store.claim(claim("d", gpus=gpus, gpu_required=True))


def test_running_instances_reserve_nothing(store):
    gpus = [(0, 10000), (1, 9000)]
    store.claim(claim("a", gpus=gpus))
    store.transition("a", {State.STARTING}, State.RUNNING)
    # The caller's free figures already show what a running worker uses.
    assert store.claim(claim("b", gpus=gpus))[0].gpu == 0


def test_gpu_placement_follows_place_on_gpu(store):
    """Random claims: each lands where base.place_on_gpu puts it given the STARTING reservations."""
    rng = random.Random(7)
    for n in range(60):
        gpus = [(i, rng.randrange(0, 24000, 500)) for i in rng.sample(range(4), rng.randint(0, 3))]
        c = claim(f"a{n}", max_instances=1000, ports=range(9000, 10000), gpus=gpus,
                  min_free_mb=rng.choice([2000, 6000]), gpu_required=rng.random() < 0.5)
        reserved: dict[int, int] = {}
        for i in store.list():
            if i.state == State.STARTING:
                reserved[i.gpu] = reserved.get(i.gpu, 0) + i.reserved_mb
        expected = place_on_gpu(gpus, reserved, c.min_free_mb)[0]
        if expected < 0 and gpus and c.gpu_required:
            with pytest.raises(CapacityError, match="no GPU has GPU_MIN_FREE_MB"):
                store.claim(c)
            continue
        instance, _ = store.claim(c)
        assert (instance.gpu, instance.reserved_mb) == (expected, c.min_free_mb if expected >= 0 else 0)
        if rng.random() < 0.4:
            store._transition(c.avatar, {State.STARTING}, rng.choice([State.RUNNING, State.FAILED]))


def test_get_by_name_or_instance_id(store):
    store.claim(claim("alice", instance_id="g_user_7", now=NOW + 1))
    store.claim(claim("bob", instance_id="g_user_7", now=NOW))
    assert store.get("alice").avatar == "alice"
    assert store.get("g_user_7").avatar == "bob"  # the oldest
    assert store.get("nobody") is None


def test_list_is_oldest_first(store):
    store.claim(claim("b", now=NOW + 2))
    store.claim(claim("c", now=NOW))
    store.claim(claim("a", now=NOW + 2))
    assert [i.avatar for i in store.list()] == ["c", "a", "b"]


def test_disconnect(store):
    store.claim(claim("alice", instance_id="g_1"))
    store.join("alice", NOW)
    first = store.disconnect("alice", NOW + 1)
    assert (first.connections, first.idle_since) == (1, 0)
    second = store.disconnect("g_1", NOW + 2)  # by instance id too
    assert (second.connections, second.idle_since) == (0, NOW + 2)
    third = store.disconnect("alice", NOW + 3)
    assert (third.connections, third.idle_since) == (0, NOW + 2)
    assert store.get("alice") == third
    with pytest.raises(NotFound):
        store.disconnect("nobody", NOW)


def test_transition_is_guarded(store):
    store.claim(claim("alice"))
    assert store.transition("alice", {State.RUNNING}, State.STOPPING, error="x") is None
    assert store.get("alice").state == State.STARTING and store.get("alice").error == ""
    moved = store.transition("alice", frozenset({State.STARTING}), State.RUNNING, pid=123, pid_started=5.5,
                             ready_at=NOW + 1, error="", restart=True, gpu=2)
    assert (moved.state, moved.pid, moved.pid_started, moved.ready_at, moved.restart, moved.gpu) == (
        State.RUNNING, 123, 5.5, NOW + 1, True, 2)
    assert store.get("alice") == moved
    assert store.transition("alice", {State.RUNNING}, State.STOPPING, state=State.EXITED).state == State.EXITED
    assert store.transition("alice", set(), State.RUNNING) is None
    assert store.transition("nobody", {State.RUNNING}, State.STOPPING) is None


def test_transition_to_an_unknown_field_changes_nothing(store):
    store.claim(claim("alice"))
    with pytest.raises(StoreError):
        store.transition("alice", {State.STARTING}, State.RUNNING, no_such_field=1)
    assert store.get("alice").state == State.STARTING


def test_stop_when_idle_is_a_compare_and_set(store):
    """The supervisor's idle stop and the eviction: RUNNING -> STOPPING only while no user came."""
    idle = {"connections": 0, "sessions": 0}
    store.claim(claim("alice"))
    assert not store.transition("alice", {State.RUNNING}, State.STOPPING, expect={**idle, "idle_since": 0.0})
    store.transition("alice", {State.STARTING}, State.RUNNING)
    assert not store.transition("alice", {State.RUNNING}, State.STOPPING, expect=idle)  # a connection
    store.disconnect("alice", NOW + 10)
    assert not store.transition("alice", {State.RUNNING}, State.STOPPING, expect={**idle, "idle_since": NOW + 9})
    assert store.transition("alice", {State.RUNNING}, State.STOPPING, expect={**idle, "idle_since": NOW + 10})
    assert store.get("alice").state == State.STOPPING
    assert not store.transition("alice", {State.RUNNING}, State.STOPPING, expect=idle)  # already stopping
    assert not store.transition("nobody", {State.RUNNING}, State.STOPPING, expect=idle)


def test_remove_only_in_the_given_state(store):
    store.claim(claim("alice"))
    assert not store.remove("alice", State.STOPPED)
    assert store.get("alice") is not None
    store._transition("alice", {State.STARTING}, State.STOPPED)
    assert store.remove("alice", State.STOPPED)
    assert store.get("alice") is None and store.list() == []
    assert not store.remove("alice", State.STOPPED)
    assert store.claim(claim("alice"))[1]


def test_lease(store):
    assert store.lease_holder("fleet", NOW) is None
    assert store.take_lease("fleet", "one", 10, NOW)
    assert store.lease_holder("fleet", NOW + 10) == "one"
    assert not store.take_lease("fleet", "two", 10, NOW + 5)
    assert not store.take_lease("fleet", "two", 10, NOW + 10)  # expires at NOW + 10: still held then
    assert store.take_lease("fleet", "one", 10, NOW + 8)  # renewed, until NOW + 18
    assert not store.take_lease("fleet", "two", 10, NOW + 15)
    assert store.lease_holder("fleet", NOW + 18.5) is None
    assert store.take_lease("fleet", "two", 10, NOW + 18.5)
    assert store.lease_holder("fleet", NOW + 19) == "two"
    store.drop_lease("fleet", "one")  # not the holder: nothing happens
    assert store.lease_holder("fleet", NOW + 19) == "two"
    store.drop_lease("fleet", "two")
    assert store.lease_holder("fleet", NOW + 19) is None
    assert store.take_lease("fleet", "one", 10, NOW + 19)
    # Leases by name are apart; without `now`, the store's own clock judges.
    assert store.take_lease("host:a", "two", 10) and store.lease_holder("host:a") == "two"
    assert store.lease_holder("fleet", NOW + 19) == "one"
    assert abs(store.clock() - time.time()) < 5


def test_counts_accumulate(store):
    assert store.counts() == {}
    store.add_counts({"starts": 1, "seconds": 2.5})
    store.add_counts({"starts": 2, "failures": 1})
    store.add_counts({})
    assert store.counts() == {"starts": 3.0, "seconds": 2.5, "failures": 1.0}


def test_concurrent_claims_respect_capacity(store):
    results: list[tuple[str, bool] | str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        start.wait(timeout=10)
        for i in range(25):
            avatar = f"a{(t * 7 + i * 3) % 50}"
            try:
                instance, created = store.claim(claim(avatar, max_instances=5, ports=range(9000, 9020)))
                outcome: tuple[str, bool] | str = (instance.avatar, created)
            except CapacityError:
                outcome = "full"
            except BaseException as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(exc)
                return
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 200
    instances = store.list()
    assert len(instances) == 5
    assert len({i.port for i in instances}) == 5
    created = [r for r in results if r != "full" and r[1]]
    assert sorted(a for a, _ in created) == sorted(i.avatar for i in instances)
    joins = [r for r in results if r != "full" and not r[1]]
    assert all(a in {i.avatar for i in instances} for a, _ in joins)
    assert sum(i.connections for i in instances) == len(created) + len(joins)


def test_redis_store_unreachable_raises_store_error():
    port = free_port()  # closed again: nothing listens there
    store = RedisStore(f"redis://:secret@127.0.0.1:{port}/0")
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}") as failure:
        store.ping()
    assert "secret" not in str(failure.value)
    with pytest.raises(StoreError):
        store.claim(claim("alice"))
    store.close()


def test_redis_store_errors_from_the_server_are_store_errors(redis_url):
    store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    store._redis.set(store.prefix + "inst:alice", "not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.get("alice")
    store.close()


def test_disconnect_with_a_token_leaves_a_later_instance_alone(store):
    store.claim(claim("alice"))
    store.claim(claim("alice"))
    kept = store.disconnect("alice", NOW + 1, token="token_of_an_earlier_instance")
    assert kept.connections == 2 and kept.idle_since == 0
    assert store.disconnect("alice", NOW + 1, token="token_alice").connections == 1


def test_a_move_outside_the_lifecycle_table_is_refused_and_changes_nothing(store):
    store.claim(claim("alice"))
    with pytest.raises(ValueError, match="no transition from STARTING to STOPPED"):
        store.transition("alice", {State.STARTING}, State.STOPPED)
    assert store.get("alice").state == State.STARTING


def test_documents_put_get_list_delete(store):
    store.put_doc("avatar", "b", {"name": "b"})
    store.put_doc("avatar", "a", {"name": "a", "quality": {"verdict": "good"}})
    assert store.get_doc("avatar", "a")["quality"]["verdict"] == "good"
    assert [d["name"] for d in store.list_docs("avatar")] == ["a", "b"]
    assert store.list_docs("job") == [] and store.get_doc("job", "a") is None
    assert store.delete_doc("avatar", "a") and not store.delete_doc("avatar", "a")
    assert [d["name"] for d in store.list_docs("avatar")] == ["b"]


def test_a_claimed_document_is_taken_once_until_it_expires(store):
    assert store.claim_doc("registering", "anna", {"job": 1}, ttl=10, now=NOW)
    assert not store.claim_doc("registering", "anna", {"job": 2}, ttl=10, now=NOW + 5)
    assert store.get_doc("registering", "anna") == {"job": 1}
    assert store.claim_doc("registering", "anna", {"job": 3}, ttl=10, now=NOW + 11)
    assert store.get_doc("registering", "anna") == {"job": 3}
    store.put_doc("avatar", "anna", {"name": "anna"})  # a plain document never expires
    assert not store.claim_doc("avatar", "anna", {"name": "other"}, ttl=10, now=NOW + 10**6)


def test_a_store_written_before_a_field_existed_reads_it_as_its_default(tmp_path, redis_url):
    """An upgrade keeps the records of the running fleet: `restarts` came later than the rest."""
    import sqlite3

    old = SqliteStore(tmp_path / "old.db")
    old.claim(claim("alice"))
    old.close()
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("ALTER TABLE instances DROP COLUMN restarts")
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "old.db")
    assert store.get("alice").restarts == 0
    store.transition("alice", {State.STARTING}, State.STARTING, restarts=2)
    assert store.get("alice").restarts == 2
    store.close()

    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisStore(redis_url, prefix=prefix)
    store.claim(claim("alice"))
    assert store._redis.hdel(f"{prefix}inst:alice", "restarts") == 1
    assert store.get("alice").restarts == 0
    store.close()


def hosts(*specs: tuple[str, int, list[tuple[int, int]]]) -> list[Host]:
    return [Host(id=name, address=f"198.18.0.{n}", public_host=f"h{n}.example.test", max_instances=most,
                 ports=[9000, 9001, 9002], gpus=list(gpus)) for n, (name, most, gpus) in enumerate(specs, 2)]


def on(avatar: str, fleet: list[Host], gpu_required: bool = False, min_free_mb: int = 6000) -> Claim:
    return Claim(avatar=avatar, instance_id=avatar, token=f"token_{avatar}", now=NOW, hosts=fleet,
                 min_free_mb=min_free_mb, gpu_required=gpu_required)


def test_cpu_instances_spread_over_hosts_each_with_its_own_ports(store):
    fleet = hosts(("a", 3, []), ("b", 3, []), ("c", 3, []))
    placed = [store.claim(on(f"x{n}", fleet))[0] for n in range(6)]
    assert [p.host for p in placed] == ["a", "b", "c", "a", "b", "c"]
    # One port number serves on every host; on one host never twice.
    assert [p.port for p in placed] == [9000, 9000, 9000, 9001, 9001, 9001]
    assert (placed[1].address, placed[1].public_host) == ("198.18.0.3", "h3.example.test")


def test_a_gpu_engine_goes_to_the_most_free_gpu_of_any_host_less_reservations(store):
    fleet = hosts(("a", 3, [(0, 9000)]), ("b", 3, [(0, 20000), (1, 7000)]))
    first = store.claim(on("m1", fleet, gpu_required=True))[0]
    assert (first.host, first.gpu, first.reserved_mb) == ("b", 0, 6000)
    second = store.claim(on("m2", fleet, gpu_required=True))[0]  # b/0 has 14000 less 6000 reserved
    assert (second.host, second.gpu) == ("b", 0)
    third = store.claim(on("m3", fleet, gpu_required=True))[0]   # a/0 9000 against b/0 8000
    assert (third.host, third.gpu) == ("a", 0)
    with pytest.raises(CapacityError, match=re.escape("(free: a GPU 0 3000 MB, b GPU 0 8000 MB, b GPU 1 7000 MB)")):
        store.claim(on("m4", fleet, gpu_required=True, min_free_mb=9000))


def test_full_on_every_host(store):
    fleet = hosts(("a", 1, []), ("b", 1, []))
    store.claim(on("x", fleet))
    store.claim(on("y", fleet))
    with pytest.raises(CapacityError, match=re.escape("every host is full (MAX_AVATARS: a 1, b 1)")):
        store.claim(on("z", fleet))


def test_a_lost_instance_is_placed_on_another_host_with_its_users(store):
    fleet = hosts(("a", 2, []), ("b", 2, []))
    lost, _ = store.claim(on("x", fleet))
    store.join("x", NOW + 1)
    store.transition("x", {State.STARTING}, State.RUNNING, pid=77, ready_at=NOW + 2)
    assert store.transition("x", {State.RUNNING}, State.LOST, pid=0, error="its host a stopped renewing")
    placed = store.place_lost("x", lost.token, [h for h in fleet if h.id != lost.host], 6000)
    assert (placed.state, placed.host, placed.connections, placed.token, placed.restarts) == (
        State.STARTING, "b", 2, lost.token, 1)
    assert store.get("x") == placed
    assert store.place_lost("x", lost.token, fleet, 6000) is None  # not LOST any more


def test_a_lost_instance_with_no_room_elsewhere_fails_and_frees_its_port(store):
    fleet = hosts(("a", 1, []), ("b", 1, []))
    x, _ = store.claim(on("x", fleet))
    store.claim(on("y", fleet))
    store.transition("x", {State.STARTING}, State.LOST, error="its host a stopped renewing")
    failed = store.place_lost("x", x.token, [h for h in fleet if h.id != x.host], 6000)
    assert (failed.state, failed.port) == (State.FAILED, 0)
    assert "no other host can run it" in failed.error and "its host a stopped renewing" in failed.error


def test_a_running_instance_reserves_its_gpu_memory_until_its_host_measures_it(store):
    gpu = [(0, 14000)]
    before = Host(id="a", address="198.18.0.2", public_host="a", max_instances=3, ports=[9000, 9001, 9002],
                  gpus=gpu, measured_at=NOW)
    store.claim(on("m1", [before], gpu_required=True))
    store.transition("m1", {State.STARTING}, State.RUNNING, ready_at=NOW + 1)
    # The host's figures predate m1: its 6000 MB still count, so a second fits and a third not.
    store.claim(on("m2", [before], gpu_required=True))
    with pytest.raises(CapacityError, match="no GPU has"):
        store.claim(on("m3", [before], gpu_required=True))
    # Measured after m1 came up (and m1's memory shows in the figures): no double count.
    after = Host(**{**before.__dict__, "gpus": [(0, 8000)], "measured_at": NOW + 2})
    assert store.claim(on("m3", [after], gpu_required=True, min_free_mb=2000))[0].gpu == 0


def test_the_leader_places_lost_instances_and_those_from_before_hosts_on_a_fleet_of_several(store, tmp_path):
    from avatar_manager import replacement
    from avatar_manager.hosts import publish
    from avatar_manager.settings import Settings

    settings = Settings.from_env({"AVATAR_DATA_DIR": str(tmp_path)})
    fleet = hosts(("a", 3, []), ("b", 3, []))
    for host in fleet:  # both live: their agents hold their leases and published them
        store.take_lease(f"host:{host.id}", f"agent-{host.id}", 10.0)
        publish(store, host)
    lost, _ = store.claim(on("lost", fleet))  # its own agent marked it LOST (shut down), then came back
    store.transition("lost", {State.STARTING}, State.LOST, error="its host a was shut down")
    store.claim(on("old", fleet))
    store._transition("old", {State.STARTING}, State.RUNNING, host="")  # a record from before hosts
    dead = store.claim(on("dead", fleet))[0]
    store.transition("dead", {State.STARTING}, State.RUNNING)
    store.drop_lease(f"host:{dead.host}", f"agent-{dead.host}")  # that host stopped renewing

    assert replacement.place_lost(store, settings, several_hosts=False) == 2
    now = {i.avatar: i for i in store.list()}
    assert now["lost"].state == State.STARTING and now["lost"].token == lost.token
    assert now["dead"].state == State.STARTING and now["dead"].host != dead.host
    assert now["old"].state == State.RUNNING  # one host: its agent runs it
    assert replacement.place_lost(store, settings, several_hosts=True) == 1
    assert store.get("old").state == State.STARTING and store.get("old").host in ("a", "b")
