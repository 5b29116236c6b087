"""Acceptance: a real manager (4 gunicorn processes, MAX_AVATARS=5) under 1000 concurrent starts
for 50 avatars runs exactly 5 workers, turns everyone else away with a clean 503, counts every
connection it granted, and leaves nothing behind after stop-all. Both store backends."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from harness.avatars import make_avatar
from harness.processes import wait_for

from avatar_manager import hosts
from avatar_manager.instances import State
from avatar_manager.lease import FLEET
from avatar_manager.fleet import Fleet, StartFailed
from avatar_manager.ports import is_free
from avatar_manager.settings import Settings
from avatar_manager.store.sqlite import SqliteStore

MAX_AVATARS = 5
AVATARS = [f"crowd{i:02d}" for i in range(50)]
REQUESTS = 1000
CLIENT_THREADS = 100


def cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # gone meanwhile
        return []


def fire(url: str, bodies: list[dict]) -> list[tuple[dict, int | None, object]]:
    """POST every body to url from CLIENT_THREADS threads at once, each with its own keep-alive
    session; (body, status or None, JSON or the exception) in order."""
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()
    go = threading.Barrier(CLIENT_THREADS)

    def post(body: dict):
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            with lock:
                sessions.append(session)
            try:
                go.wait(timeout=30)  # every thread has its session before the first request
            except threading.BrokenBarrierError:
                pass
        try:
            r = session.post(url, json=body, timeout=90)
        except requests.RequestException as exc:
            return body, None, exc
        try:
            return body, r.status_code, r.json()
        except ValueError:
            return body, r.status_code, r.text

    try:
        with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
            return list(pool.map(post, bodies))
    finally:
        for session in sessions:
            session.close()


def test_1000_concurrent_starts_for_50_avatars_run_exactly_max_avatars(manager, store_env):
    m = manager(WEB_CONCURRENCY="4", MAX_AVATARS=str(MAX_AVATARS), WORKER_MODULE="tests.fake_worker",
                IDLE_TIMEOUT="300", **store_env)

    def api_processes() -> list:
        return [p for p in m.tree() if "gunicorn" in " ".join(cmdline(p))]

    # /ready answers once one gunicorn worker serves; all 4 take part in the storm.
    wait_for(lambda: len(api_processes()) >= 1 + 4, 30, "gunicorn's arbiter and its 4 workers")
    api = api_processes()
    assert len(api) == 1 + 4, [cmdline(p) for p in api]  # gunicorn's arbiter and its 4 workers
    for name in AVATARS:
        m.avatar(name)
    ports = range(m.base_port, m.base_port + MAX_AVATARS)

    order = AVATARS * (REQUESTS // len(AVATARS))
    random.Random(1000).shuffle(order)
    # The existing backend's ids ("NAME_user_N", the avatar implied), and explicit names.
    bodies = [{"avatar_id": f"{name}_user_{n}"} if n % 2 else {"avatar_id": f"user{n}", "avatar_name": name}
              for n, name in enumerate(order)]
    started = time.monotonic()
    results = fire(m.url + "/avatar/start", bodies)
    elapsed = time.monotonic() - started

    failures = [(b, s, r) for b, s, r in results if s not in (200, 503)]
    assert not failures, f"{len(failures)} responses neither 200 nor 503, e.g. {failures[:5]}"

    listed = m.get("/avatar/list").json()
    instances = listed["data"]
    assert listed["count"] == len(instances) == MAX_AVATARS, instances
    running = {i["real_avatar_name"] for i in instances}
    assert len(running) == MAX_AVATARS and all(i["state"] == "RUNNING" for i in instances), instances

    accepted: Counter[str] = Counter()
    for body, status, reply in results:
        name = body.get("avatar_name") or body["avatar_id"].split("_user_")[0]
        if status == 200:
            assert reply["status"] == "success" and reply["data"]["real_avatar_name"] == name, reply
            assert name in running and reply["data"]["state"] == "RUNNING", reply
            accepted[name] += 1
        else:
            assert name not in running, (body, reply)
            assert reply["status"] == "error" and "data" not in reply, reply
            assert f"MAX_AVATARS={MAX_AVATARS}" in reply["message"], reply
    # Every request for one of the 5 joined it; every connection granted is counted, once.
    assert set(accepted) == running
    assert {i["real_avatar_name"]: i["connections"] for i in instances} == dict(accepted)
    assert sum(i["connections"] for i in instances) == sum(accepted.values())
    assert sum(accepted.values()) == sum(order.count(name) for name in running)
    assert sum(1 for i in instances if i["connections"]) == MAX_AVATARS
    status = m.get("/status").json()["data"]["manager"]
    assert (status["running"], status["available"], status["total_connections"]) == (
        MAX_AVATARS, 0, sum(accepted.values()))

    assert len({i["port"] for i in instances}) == MAX_AVATARS and all(i["port"] in ports for i in instances)
    assert len({i["pid"] for i in instances}) == MAX_AVATARS
    workers = []
    for instance in instances:
        process = psutil.Process(instance["pid"])
        argv = process.cmdline()
        assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        assert "tests.fake_worker" in argv, argv
        assert f"--avatar_id={instance['real_avatar_name']}" in argv
        assert f"--listenport={instance['port']}" in argv
        health = requests.get(f"http://127.0.0.1:{instance['port']}/health", timeout=5).json()
        assert health["pid"] == instance["pid"]
        workers.append(process)
    assert sorted(p.pid for p in m.tree() if "tests.fake_worker" in cmdline(p)) == sorted(p.pid for p in workers)

    r = m.post("/avatar/stop-all")
    assert r.status_code == 200 and r.json()["message"] == f"{MAX_AVATARS} avatar instance(s) stopped", r.text
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, alive
    assert not [p for p in m.tree() if "tests.fake_worker" in cmdline(p)]
    assert [p for p in ports if not is_free(p)] == []
    listed = m.get("/avatar/list").json()
    assert (listed["count"], listed["data"]) == (0, [])

    statuses = Counter(s for _, s, _ in results)
    print(f"\n{store_env and 'redis' or 'sqlite'}: {REQUESTS} starts in {elapsed:.1f} s: "
          f"{statuses[200]} x 200, {statuses[503]} x 503; running {sorted(running)}")


def test_a_failed_start_leaves_the_next_instances_connections_alone(tmp_path, monkeypatch):
    """Callers that joined a cold start which then fails give their connection back; if another
    caller has meanwhile started the avatar afresh, that instance's count must not drop. Seen with
    a real manager (20 callers on a start that crashes, then one retry): the new RUNNING instance
    had 1 user and connections 0, so the idle reaper would stop it under that user."""
    settings = Settings.from_env({"AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs")})
    make_avatar(settings.data_dir, "x")
    store = SqliteStore(tmp_path / "store.sqlite3")
    # What a host agent does: lead the fleet, and publish this host.
    store.take_lease(FLEET, "test", 60.0)
    hosts.publish(store, hosts.Host(id=settings.host_id, address="127.0.0.1", public_host="127.0.0.1",
                                    max_instances=settings.max_avatars, ports=list(settings.ports), gpus=[]))
    first, second = Fleet(settings, store), Fleet(settings, store)
    wait_running = first._wait_running

    def fail_then_start_afresh(instance, deadline):
        # The supervisor gives up on this cold start; before this caller looks again, another
        # caller starts the avatar afresh and its worker comes up.
        store.transition("x", {State.STARTING}, State.FAILED, port=0, reserved_mb=0, error="crashed")
        fresh, created = second._claim("x_user_2", "x", needs_gpu=False, deadline=deadline)
        assert created and fresh.token != instance.token
        store.transition("x", {State.STARTING}, State.RUNNING, ready_at=time.time())
        return wait_running(instance, deadline)

    monkeypatch.setattr(first, "_wait_running", fail_then_start_afresh)
    try:
        with pytest.raises(StartFailed):
            first.start("x_user_1", "x")
        current = store.get("x")
        assert (current.instance_id, current.state, current.connections) == ("x_user_2", State.RUNNING, 1)
    finally:
        store.close()
