"""The manager's REST API end to end, with real processes only: `python -m avatar_manager`
(supervisor + gunicorn) in a subprocess, the real lip-sync worker or the fault-injection one
(tests/fake_worker.py), a real redis-server. No mocks; no wall-clock assertions (bounded polls)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from avatar_manager.ports import is_free
from conftest import ROOT
from harness.avatars import make_avatar
from harness.manager import Manager
from harness.ports import free_port
from harness.processes import gone, wait_for

FAKE = "tests.fake_worker"
BAD_NAMES = ["a/b", "..", "a b", "a;b", "$(id)", "`x`", "a|b", "x" * 65]


# --- helpers -------------------------------------------------------------------------------------

def ok(response: requests.Response):
    """A 200 with the success envelope; its data."""
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    body = response.json()
    assert body["status"] == "success", body
    assert isinstance(body["message"], str) and body["message"], body
    return body.get("data")


def error(response: requests.Response, code: int) -> str:
    """An error with this status code and the error envelope; its message."""
    assert response.status_code == code, f"expected {code}, got {response.status_code}: {response.text}"
    body = response.json()
    assert body["status"] == "error", body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    return body["message"]


def ok_message(response: requests.Response) -> str:
    ok(response)
    return response.json()["message"]


def listing(m: Manager) -> list[dict]:
    response = m.get("/avatar/list")
    data = ok(response)
    assert response.json()["count"] == len(data)
    return data


def info(m: Manager, key: str) -> dict | None:
    response = m.get(f"/avatar/info/{key}")
    if response.status_code == 404:
        return None
    return ok(response)


def tree_pids(m: Manager) -> set[int]:
    return {p.pid for p in m.tree()}


def avatar_logs(m: Manager) -> set[str]:
    return {p.name for p in m.log_dir.glob("avatar_*.log")} if m.log_dir.exists() else set()


def port_free(port: int) -> bool:
    """Nothing listens on the port, and the worker could bind it again (as ports.is_free)."""
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
        return False
    except requests.ConnectionError:
        pass
    return is_free(port)


def metric_values(m: Manager) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from /metrics parsed as Prometheus text."""
    response = m.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def in_range(m: Manager, port: int) -> bool:
    return m.base_port <= port < m.base_port + m.max_avatars


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_manager(tmp_path_factory):
    """One manager with the fake worker and the defaults, for the checks that do not need their own
    settings; each test leaves it empty (see `fm`)."""
    m = Manager(tmp_path_factory.mktemp("shared"), {"WORKER_MODULE": FAKE})
    for name in ("a", "b", "c", "g", "warm"):
        m.avatar(name)
    m.avatar("slow", fault="slow:4")
    m.avatar("pooled", fault="slow:1")
    with m:
        yield m


@pytest.fixture
def fm(shared_manager):
    """The shared fake-worker manager, empty before and after the test."""
    m = shared_manager
    m.headers = {}
    assert listing(m) == []
    yield m
    ok(m.post("/avatar/stop-all", {}))
    assert listing(m) == []
    assert m.workers() == {}


# --- 1 and 13: the existing backend's sequence --------------------------------------------------

def backend_sequence(m: Manager, name: str) -> None:
    """What the existing backend does: two users start the same avatar, look it up, leave."""
    started = ok(m.start_avatar(f"{name}_user_1", name))
    assert started["is_new"] is True
    assert started["avatar_id"] == f"{name}_user_1"
    assert started["real_avatar_name"] == name
    port, pid = started["port"], started["pid"]
    assert isinstance(port, int) and in_range(m, port), (port, m.base_port, m.max_avatars)
    assert started["gpu"] == -1
    assert isinstance(pid, int) and pid > 0 and psutil.pid_exists(pid)
    assert started["state"] == "RUNNING" and started["running"] is True
    assert datetime.fromisoformat(started["start_time"]).tzinfo is not None
    assert isinstance(started["uptime_seconds"], (int, float)) and started["uptime_seconds"] >= 0
    assert started["webrtc_url"] == f"http://127.0.0.1:{port}/offer"
    assert started["connections"] == 1
    assert m.workers() == {pid: name}

    # The worker itself answers on that port, for that avatar.
    health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
    assert health["avatar"] == name
    assert health["pid"] == pid

    joined = ok(m.start_avatar(f"{name}_user_2", name))
    assert joined["is_new"] is False
    assert (joined["port"], joined["pid"], joined["connections"]) == (port, pid, 2)
    assert joined["state"] == "RUNNING"
    assert m.workers() == {pid: name}

    instances = listing(m)
    assert len(instances) == 1 and instances[0]["real_avatar_name"] == name and instances[0]["pid"] == pid
    for key in (f"{name}_user_1", name):
        found = info(m, key)
        assert found is not None, key
        assert (found["real_avatar_name"], found["pid"], found["port"], found["connections"]) == (name, pid, port, 2)

    status = ok(m.get("/status"))
    assert status["manager"]["running"] == 1
    assert status["manager"]["max"] == m.max_avatars
    assert status["manager"]["available"] == m.max_avatars - 1
    assert isinstance(status["gpu"], list)

    left = ok(m.post("/avatar/disconnect", {"avatar_name": name}))
    assert left["connections"] == 1 and left["state"] == "RUNNING"

    ok(m.post("/avatar/stop", {"avatar_id": f"{name}_user_1"}))
    # The stop answers once the worker is gone and its port is free again.
    assert gone(pid), psutil.Process(pid)
    assert port_free(port)
    assert m.workers() == {}
    assert listing(m) == []


def test_backend_sequence_with_the_real_worker(manager, demo_source):
    m = manager(start=False)
    make_avatar(m.data_dir, "demo", source=demo_source)
    m.start()
    backend_sequence(m, "demo")


def test_backend_sequence_with_the_redis_store(manager, redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/7"  # a database of its own on the session's server
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        m = manager(start=False, REDIS_URL=url, WORKER_MODULE=FAKE)
        m.avatar("demo")
        m.start()
        assert ok(m.get("/ready"))["store"] == "redis"
        started = ok(m.start_avatar("probe_user_1", "demo"))
        # The record of the instance lives in Redis, not in a local file.
        assert client.hget("avm:inst:demo", "pid") == str(started["pid"]).encode()
        assert not (m.data_dir / "manager.sqlite3").exists()
        ok(m.post("/avatar/stop", {"avatar_id": "demo"}))
        backend_sequence(m, "demo")
        assert not client.exists("avm:inst:demo")
    finally:
        client.flushdb()
        client.close()


# --- 2: avatar_id without avatar_name ------------------------------------------------------------

def test_avatar_id_alone_names_the_avatar_before_user(fm):
    started = ok(fm.start_avatar("g_user_7"))
    assert started["real_avatar_name"] == "g" and started["avatar_id"] == "g_user_7"
    assert fm.workers() == {started["pid"]: "g"}
    joined = ok(fm.start_avatar("g_user_8"))
    assert joined["is_new"] is False and joined["pid"] == started["pid"] and joined["connections"] == 2
    assert info(fm, "g")["pid"] == started["pid"]


# --- 3: errors spawn nothing ---------------------------------------------------------------------

def test_bad_requests_are_refused_and_spawn_nothing(fm):
    m = fm
    pids, logs = tree_pids(m), avatar_logs(m)
    counts = metric_values(m)
    url = m.url

    def post_raw(path, data, content_type):
        return requests.post(url + path, data=data, headers={"Content-Type": content_type}, timeout=30)

    assert "avatar_id" in error(m.post("/avatar/start", {"avatar_name": "a"}), 400)
    for empty in ({"avatar_id": ""}, {"avatar_id": None}, {}):
        error(m.post("/avatar/start", empty), 400)
    assert "nosuch" in error(m.start_avatar("nosuch_user_1"), 404)
    assert "nosuch" in error(m.start_avatar("x_user_1", "nosuch"), 404)
    error(post_raw("/avatar/start", '{"avatar_id": "a"}', "text/plain"), 400)
    error(post_raw("/avatar/start", '{"avatar_id": "a"', "application/json"), 400)
    error(post_raw("/avatar/start", "not json at all", "application/json"), 400)
    for not_an_object in ([{"avatar_id": "a"}], "a", 5, None):
        error(m.post("/avatar/start", not_an_object), 400)
    for bad in BAD_NAMES:
        error(m.start_avatar(bad, "a"), 400)
        error(m.start_avatar("a_user_1", bad), 400)
        error(m.post("/avatar/start", {"avatar_id": bad}), 400)
    for not_a_string in (5, 1.5, True, ["a"], {"a": 1}):
        assert "avatar_id" in error(m.post("/avatar/start", {"avatar_id": not_a_string}), 400)
        assert "avatar_name" in error(m.post("/avatar/start", {"avatar_id": "a_user_1",
                                                               "avatar_name": not_a_string}), 400)
    assert "nosuch" in error(m.get("/avatar/info/nosuch"), 404)
    assert "nosuch" in error(m.post("/avatar/stop", {"avatar_id": "nosuch"}), 404)
    error(m.post("/avatar/stop", {}), 400)
    error(m.post("/avatar/disconnect", {"avatar_name": "nosuch"}), 404)
    error(m.post("/avatar/disconnect", {}), 400)
    error(m.post("/avatar/restart", {"avatar_id": "nosuch"}), 404)
    for force in ("no", "false", 0, 1, None, [True]):
        assert "force" in error(m.post("/avatar/stop", {"avatar_id": "a", "force": force}), 400)
    too_big = '{"avatar_id": "a", "pad": "' + "x" * 100_000 + '"}'
    error(post_raw("/avatar/start", too_big, "application/json"), 413)
    error(post_raw("/avatar/start", too_big, "text/plain"), 413)
    error(m.get("/avatar/start"), 405)
    error(m.get("/avatar/stop-all"), 405)
    error(m.post("/avatar/list", {}), 405)
    error(m.get("/no/such/route"), 404)

    assert listing(m) == []
    assert avatar_logs(m) == logs, "a refused request left a worker log"
    assert tree_pids(m) == pids, "a refused request started (or ended) a process"
    after = metric_values(m)
    for name in ("avatar_starts_total", "avatar_start_failures_total"):
        assert after[(name, ())] == counts[(name, ())], name


# --- 4: pooling under concurrency ----------------------------------------------------------------

def test_concurrent_starts_of_one_avatar_share_one_process(fm):
    barrier = threading.Barrier(10)

    def start(i: int) -> requests.Response:
        barrier.wait()
        return fm.start_avatar(f"pooled_user_{i}", "pooled")

    with ThreadPoolExecutor(10) as pool:
        answers = [ok(r) for r in pool.map(start, range(10))]
    assert len({a["pid"] for a in answers}) == 1
    assert len({a["port"] for a in answers}) == 1
    assert sum(a["is_new"] for a in answers) == 1
    assert all(a["state"] == "RUNNING" for a in answers)
    assert sorted(a["connections"] for a in answers) == list(range(1, 11))  # each caller its own count
    assert info(fm, "pooled")["connections"] == 10
    assert fm.workers() == {answers[0]["pid"]: "pooled"}
    assert len(listing(fm)) == 1


# --- 5: a cold start blocks nothing else ---------------------------------------------------------

def test_a_cold_start_does_not_block_other_requests(fm):
    warm = ok(fm.start_avatar("warm_user_1", "warm"))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(fm.start_avatar, "slow_user_1", "slow")
        wait_for(lambda: (info(fm, "slow") or {}).get("state") == "STARTING", what="slow to be STARTING")

        joined = ok(fm.start_avatar("warm_user_2", "warm"))
        assert joined["pid"] == warm["pid"] and joined["connections"] == 2
        states = {i["real_avatar_name"]: i["state"] for i in ok(fm.get("/avatar/list?all=1"))}
        assert states == {"warm": "RUNNING", "slow": "STARTING"}
        ok(fm.get("/status"))
        # All of that was answered while the slow worker was still coming up.
        assert info(fm, "slow")["state"] == "STARTING"
        assert not slow.done()

        started = ok(slow.result(timeout=60))
    assert started["state"] == "RUNNING" and started["is_new"] is True


def test_a_stop_during_a_cold_start_kills_the_starting_worker(fm):
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(fm.start_avatar, "slow_user_1", "slow")
        pid = wait_for(lambda: (info(fm, "slow") or {}).get("pid"), what="slow's worker to be spawned")
        assert info(fm, "slow")["state"] == "STARTING"
        ok(fm.post("/avatar/stop", {"avatar_id": "slow"}))
        assert gone(pid)
        assert "stopped" in error(starting.result(timeout=60), 503)
    assert listing(fm) == [] and fm.workers() == {}


# --- 6: failed starts -----------------------------------------------------------------------------

def test_failed_starts_report_why_and_leave_nothing(manager):
    m = manager(start=False, WORKER_MODULE=FAKE, MAX_AVATARS=1, STARTUP_TIMEOUT=2)
    m.avatar("crash", fault="crash")
    m.avatar("hang", fault="hang")
    m.avatar("liar", fault="wrong_token")
    m.avatar("fine")
    m.start()
    only_port = m.base_port

    def only_manager_processes() -> bool:
        return m.workers() == {}

    crashed = m.start_avatar("crash_user_1", "crash")
    assert "crashing at start as asked" in error(crashed, 503)
    assert crashed.json()["reason"] == "start_failed"
    assert only_manager_processes()
    assert port_free(only_port)
    fine = ok(m.start_avatar("fine_user_1", "fine"))  # the one port (MAX_AVATARS=1) was given back
    assert fine["port"] == only_port
    ok(m.post("/avatar/stop", {"avatar_id": "fine"}))

    for name in ("hang", "liar"):
        message = error(m.start_avatar(f"{name}_user_1", name), 503)
        assert "STARTUP_TIMEOUT" in message, message
        assert only_manager_processes(), m.workers()
        for p in m.tree():  # the manager, its API, the TTS and ASR servers it started: nothing else
            argv = " ".join(p.cmdline())
            assert any(part in argv for part in ("avatar_manager", "gunicorn", "tts_services", "asr_services")), argv
        assert port_free(only_port)
        assert ok(m.start_avatar("fine_user_1", "fine"))["port"] == only_port
        ok(m.post("/avatar/stop", {"avatar_id": "fine"}))

    # The failures stay visible (FAILED) without holding a port: in ?all=1, not in the plain list
    # (a backend resyncs from it and needs a port for each entry).
    assert listing(m) == []
    states = {i["real_avatar_name"]: (i["state"], i["port"]) for i in ok(m.get("/avatar/list?all=1"))}
    assert states == {"crash": ("FAILED", None), "hang": ("FAILED", None), "liar": ("FAILED", None)}

    # A restart clears FAILED: it tries again (and says why when it fails again) ...
    assert "crashing at start as asked" in error(m.post("/avatar/restart", {"avatar_id": "crash"}), 503)
    assert m.workers() == {} and port_free(only_port)
    # ... and once the avatar is mended, it runs.
    (m.data_dir / "avatars" / "crash" / "config.json").write_text(json.dumps({"fault": []}))
    mended = ok(m.post("/avatar/restart", {"avatar_id": "crash"}))
    assert mended["state"] == "RUNNING" and mended["port"] == only_port
    assert m.workers() == {mended["pid"]: "crash"}


# --- 7: capacity ----------------------------------------------------------------------------------

def test_max_avatars_is_enforced_and_freed_by_a_stop(manager):
    m = manager(start=False, WORKER_MODULE=FAKE, MAX_AVATARS=2)
    for name in ("a", "b", "c", "d", "e", "f"):
        m.avatar(name)
    m.start()
    a = ok(m.start_avatar("a_user_1", "a"))
    ok(m.start_avatar("b_user_1", "b"))
    logs = avatar_logs(m)
    full = m.start_avatar("c_user_1", "c")
    assert "MAX_AVATARS" in error(full, 503) and full.json()["reason"] == "capacity"
    assert avatar_logs(m) == logs
    assert sorted(m.workers().values()) == ["a", "b"]
    assert info(m, "c") is None
    # A join of a running avatar is not a new instance: still fine at capacity.
    assert ok(m.start_avatar("a_user_2", "a"))["connections"] == 2

    ok(m.post("/avatar/stop", {"avatar_id": "a"}))
    c = ok(m.start_avatar("c_user_1", "c"))
    assert c["is_new"] is True and c["port"] == a["port"]
    assert sorted(m.workers().values()) == ["b", "c"]

    # One slot left and three avatars racing for it: exactly one gets it.
    ok(m.post("/avatar/stop", {"avatar_id": "b"}))
    barrier = threading.Barrier(3)

    def start(name: str) -> requests.Response:
        barrier.wait()
        return m.start_avatar(f"{name}_user_1", name)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(start, ("d", "e", "f")))
    assert sorted(r.status_code for r in answers) == [200, 503, 503], [r.text for r in answers]
    for r in answers:
        if r.status_code == 503:
            assert "MAX_AVATARS" in error(r, 503)
    winner = next(ok(r) for r in answers if r.status_code == 200)
    assert sorted(m.workers().values()) == sorted(["c", winner["real_avatar_name"]])
    assert len(listing(m)) == 2


# --- 8: idle instances ----------------------------------------------------------------------------

def test_idle_timeout_zero_stops_at_the_last_disconnect(manager):
    m = manager(start=False, WORKER_MODULE=FAKE, IDLE_TIMEOUT=0)
    m.avatar("a")
    m.avatar("b")
    m.start()
    a = ok(m.start_avatar("a_user_1", "a"))
    ok(m.post("/avatar/disconnect", {"avatar_id": "a_user_1"}))
    wait_for(lambda: listing(m) == [], what="the idle instance to be stopped")
    assert gone(a["pid"]) and port_free(a["port"])

    # A non-forced stop is a disconnect: at zero connections it stops too.
    b = ok(m.start_avatar("b_user_1", "b"))
    ok(m.post("/avatar/stop", {"avatar_id": "b", "force": False}))
    wait_for(lambda: listing(m) == [], what="b to be stopped")
    assert gone(b["pid"])


def test_idle_timeout_keeps_an_idle_instance_warm_for_a_while(manager):
    m = manager(start=False, WORKER_MODULE=FAKE, IDLE_TIMEOUT=2)
    m.avatar("a")
    m.avatar("busy")
    m.start()
    busy = ok(m.start_avatar("busy_user_1", "busy"))
    a = ok(m.start_avatar("a_user_1", "a"))
    left = ok(m.post("/avatar/disconnect", {"avatar_name": "a"}))
    assert left["connections"] == 0 and left["state"] == "RUNNING"
    assert info(m, "a")["state"] == "RUNNING"
    assert not gone(a["pid"])
    # Joining a warm instance reuses it.
    again = ok(m.start_avatar("a_user_2", "a"))
    assert again["is_new"] is False and again["pid"] == a["pid"] and again["connections"] == 1
    ok(m.post("/avatar/disconnect", {"avatar_name": "a"}))
    wait_for(lambda: info(m, "a") is None, what="a to be stopped after IDLE_TIMEOUT")
    assert gone(a["pid"])
    # busy has had a connection all along, and it has been up longer than IDLE_TIMEOUT by now.
    still = info(m, "busy")
    assert still["state"] == "RUNNING" and still["pid"] == busy["pid"] and still["connections"] == 1
    assert m.workers() == {busy["pid"]: "busy"}


def test_a_stop_without_force_only_disconnects_while_others_are_connected(fm):
    first = ok(fm.start_avatar("a_user_1", "a"))
    ok(fm.start_avatar("a_user_2", "a"))
    assert "force" in error(fm.post("/avatar/stop", {"avatar_id": "a", "force": "no"}), 400)
    assert info(fm, "a")["connections"] == 2
    stays = ok(fm.post("/avatar/stop", {"avatar_id": "a", "force": False}))
    assert stays["connections"] == 1 and stays["state"] == "RUNNING" and stays["pid"] == first["pid"]
    assert fm.workers() == {first["pid"]: "a"}
    ok(fm.post("/avatar/stop", {"avatar_id": "a", "force": True}))
    assert info(fm, "a") is None and gone(first["pid"])


# --- 9: restart and stop-all ----------------------------------------------------------------------

def test_restart_keeps_the_port_with_a_new_process(fm):
    before = ok(fm.start_avatar("a_user_1", "a"))
    ok(fm.start_avatar("a_user_2", "a"))
    after = ok(fm.post("/avatar/restart", {"avatar_id": "a_user_1"}))
    assert after["connections"] == 2
    assert after["port"] == before["port"]
    assert after["pid"] != before["pid"]
    assert (before["restarts"], after["restarts"]) == (0, 1)
    assert after["state"] == "RUNNING" and after["running"] is True
    assert gone(before["pid"])
    assert fm.workers() == {after["pid"]: "a"}
    health = requests.get(f"http://127.0.0.1:{after['port']}/health", timeout=5).json()
    assert health["pid"] == after["pid"]


def test_stop_all_stops_every_instance(fm):
    started = [ok(fm.start_avatar(f"{n}_user_1", n)) for n in ("a", "b", "c")]
    assert sorted(fm.workers().values()) == ["a", "b", "c"]
    assert "3" in ok_message(fm.post("/avatar/stop-all", {}))
    assert listing(fm) == []
    assert fm.workers() == {}
    for s in started:
        assert gone(s["pid"]) and port_free(s["port"])


# --- 10: security ---------------------------------------------------------------------------------

def test_api_token_and_cors(manager):
    m = manager(start=False, WORKER_MODULE=FAKE, API_TOKEN="s3cret", CORS_ORIGINS="http://good.example")
    m.avatar("a")
    m.headers = {"Authorization": "Bearer s3cret"}
    m.start()
    url = m.url

    assert requests.get(url + "/health", timeout=10).status_code == 200
    calls = [("GET", "/ready", None), ("GET", "/status", None), ("GET", "/metrics", None),
             ("GET", "/avatar/list", None), ("GET", "/avatar/info/a", None),
             ("POST", "/avatar/start", {"avatar_id": "a_user_1", "avatar_name": "a"}),
             ("POST", "/avatar/disconnect", {"avatar_name": "a"}), ("POST", "/avatar/stop", {"avatar_id": "a"}),
             ("POST", "/avatar/restart", {"avatar_id": "a"}), ("POST", "/avatar/stop-all", {}),
             ("GET", "/tts", None), ("GET", "/console/config", None), ("GET", "/avatar/a/preview", None),
             ("POST", "/avatar/a/offer", {"sdp": "v=0", "type": "offer"}), ("POST", "/avatar/a/human", {})]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Bearer s3cret2"}, {"Authorization": "Basic czNjcmV0"}):
        for method, path, body in calls:
            response = requests.request(method, url + path, json=body, headers=headers, timeout=30)
            error(response, 401)
    assert avatar_logs(m) == set() and m.workers() == {}, "an unauthorised start spawned a worker"

    for path in ("/ready", "/status", "/metrics", "/avatar/list", "/tts", "/console/config"):
        assert m.get(path).status_code == 200, path
    # The console and its files load without the token: the page is what asks for it.
    for path in ("/", "/static/main.js", "/static/console.css"):
        assert requests.get(url + path, timeout=10).status_code == 200, path
    started = ok(m.start_avatar("a_user_1", "a"))
    assert ok(m.get("/avatar/info/a"))["pid"] == started["pid"]
    ok(m.post("/avatar/disconnect", {"avatar_name": "a"}))
    ok(m.post("/avatar/restart", {"avatar_id": "a"}))
    ok(m.post("/avatar/stop", {"avatar_id": "a"}))
    ok(m.post("/avatar/stop-all", {}))

    # CORS: the allowed origin is echoed, another one is not.
    for path, headers in (("/health", {}), ("/avatar/list", m.headers)):
        good = requests.get(url + path, headers={**headers, "Origin": "http://good.example"}, timeout=10)
        assert good.headers.get("Access-Control-Allow-Origin") == "http://good.example"
        evil = requests.get(url + path, headers={**headers, "Origin": "http://evil.example"}, timeout=10)
        assert "Access-Control-Allow-Origin" not in evil.headers
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    good = requests.options(url + "/avatar/start", headers={**preflight, "Origin": "http://good.example"}, timeout=10)
    assert good.status_code == 200 and good.headers.get("Access-Control-Allow-Origin") == "http://good.example"
    evil = requests.options(url + "/avatar/start", headers={**preflight, "Origin": "http://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in evil.headers


def test_the_api_listens_on_localhost_only_by_default(fm):
    listening = []
    for p in fm.tree():
        try:
            if "gunicorn" not in " ".join(p.cmdline()):
                continue
            listening += [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert any(addr.port == fm.port for addr in listening), listening
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, listening


# --- 11: configuration ----------------------------------------------------------------------------

def _manager_processes_for(data_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("AVATAR_DATA_DIR") == str(data_dir):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("name, value", [("MAX_AVATARS", "abc"), ("GPU_IDS", "x"), ("REDIS_URL", "http://x"),
                                         ("AVATAR_MANAGER_PORT", "70000"), ("ICE_SERVERS", '[{"url": "x"}]')])
def test_a_bad_setting_stops_the_manager_at_start(tmp_path, name, value):
    port = free_port()
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAX_AVATARS", "GPU_IDS", "REDIS_URL", "API_TOKEN", "AVATAR_BASE_PORT")}
    env.update({"AVATAR_DATA_DIR": str(data_dir), "LOG_DIR": str(log_dir), "AVATAR_MANAGER_PORT": str(port),
                "WORKER_MODULE": FAKE, name: value})
    result = subprocess.run([sys.executable, "-m", "avatar_manager"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0], lines[0]
    assert result.stdout == ""
    # Nothing was started: no log folder, no store file, nothing listening, no process left.
    assert not log_dir.exists()
    assert not (data_dir / "manager.sqlite3").exists()
    if name != "AVATAR_MANAGER_PORT":
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
    assert _manager_processes_for(data_dir) == []


# --- 12: metrics and readiness --------------------------------------------------------------------

def test_metrics_count_instances_and_starts(fm):
    assert ok(fm.get("/ready"))["store"] == "sqlite"
    before = metric_values(fm)
    ok(fm.start_avatar("a_user_1", "a"))
    after = metric_values(fm)
    assert after[("avatar_instances", (("state", "RUNNING"),))] == 1
    assert after[("avatar_instances", (("state", "STARTING"),))] == 0
    assert after[("avatar_starts_total", ())] == before[("avatar_starts_total", ())] + 1
    assert after[("avatar_start_seconds_count", ())] == before[("avatar_start_seconds_count", ())] + 1
    assert after[("avatar_start_seconds_bucket", (("le", "+Inf"),))] == after[("avatar_start_seconds_count", ())]
    assert after[("avatar_start_seconds_sum", ())] > before[("avatar_start_seconds_sum", ())]
    assert after[("avatar_instances_max", ())] == fm.max_avatars
    assert after[("avatar_connections", ())] == 1
    text = fm.get("/metrics").text
    assert "# TYPE avatar_start_seconds histogram" in text
    assert 'avatar_instances{state="RUNNING"} 1.0' in text
    ok(fm.post("/avatar/stop", {"avatar_id": "a"}))
    assert metric_values(fm)[("avatar_instances", (("state", "RUNNING"),))] == 0


# --- bugs found ------------------------------------------------------------------------------------

def test_names_with_a_trailing_newline_are_refused(fm):
    """check_name uses NAME.match with a '$' anchor, and '$' also matches before a final newline."""
    logs = avatar_logs(fm)
    error(fm.start_avatar("a_user_1\n", "a"), 400)
    error(fm.start_avatar("a_user_1", "a\n"), 400)
    assert listing(fm) == []
    assert avatar_logs(fm) == logs


def test_deeply_nested_json_is_a_bad_request_not_a_500(fm):
    """40 KB of nested arrays (under MAX_JSON_BYTES) makes json.loads raise RecursionError, which
    get_json(silent=True) does not swallow: the API answers 500 for something a client sent."""
    nested = "[" * 20_000 + "]" * 20_000
    response = requests.post(fm.url + "/avatar/start", data=nested, headers={"Content-Type": "application/json"},
                             timeout=30)
    error(response, 400)


def test_a_joiner_can_disconnect_with_its_own_avatar_id(fm):
    """g_user_8 joins avatar g's instance (created by g_user_7) with avatar_id alone, as start
    allows; its disconnect with the same avatar_id alone must release its connection, or the
    instance never idles out."""
    ok(fm.start_avatar("g_user_7"))
    ok(fm.start_avatar("g_user_8"))
    left = ok(fm.post("/avatar/disconnect", {"avatar_id": "g_user_8"}))
    assert left["real_avatar_name"] == "g" and left["connections"] == 1
