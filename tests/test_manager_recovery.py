"""The supervisor keeps the fleet up: crashed and hung workers are replaced, crash loops end in
FAILED, and a manager killed outright is replaced by one that adopts the live workers."""
from __future__ import annotations

import json
import os
import signal
import time

import psutil
import requests

from harness.processes import gone, wait_for


def test_a_killed_worker_is_replaced_on_its_port_with_its_connections(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("a")
    first = m.start_avatar("a_user_1").json()["data"]
    m.start_avatar("a_user_2")
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_for(lambda: (i := m.info("a")) and i["state"] == "RUNNING" and i["pid"] != first["pid"] and i,
                     what="a replacement worker")
    assert again["port"] == first["port"] and again["connections"] == 2
    health = requests.get(f"http://127.0.0.1:{again['port']}/health", timeout=2).json()
    assert health["pid"] == again["pid"]
    assert gone(first["pid"])


def test_a_hung_worker_is_killed_and_replaced(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", HEALTH_CHECK_INTERVAL="0.3", HEALTH_CHECK_MISSES="2")
    m.avatar("h", fault="freeze_after:1")
    first = m.start_avatar("h").json()["data"]
    wait_for(lambda: (i := m.info("h")) and i["pid"] not in (None, first["pid"]), what="the hung worker replaced")
    assert gone(first["pid"])


def test_a_crash_loop_ends_in_failed_with_the_port_released_and_restart_clears_it(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", MAX_AVATARS=1)
    folder = m.avatar("loop", fault="crash_after:0.3")
    assert m.start_avatar("loop").status_code == 200
    failed = wait_for(lambda: (i := m.info("loop")) and i["state"] == "FAILED" and i, timeout=60,
                      what="FAILED after the restart budget")
    assert failed["port"] is None and "exited with code 4" in failed["error"]
    assert m.get("/status").json()["data"]["manager"]["states"]["FAILED"] == 1
    # The port went back: with MAX_AVATARS=1 another avatar can start.
    m.avatar("other")
    assert m.start_avatar("other").status_code == 200
    assert m.post("/avatar/stop", {"avatar_id": "other"}).status_code == 200
    # Fixed, then restarted by hand: it runs again.
    (folder / "config.json").write_text("{}")
    restarted = m.post("/avatar/restart", {"avatar_id": "loop"})
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["data"]["state"] == "RUNNING"


def test_after_the_manager_is_killed_a_new_one_adopts_the_live_workers(manager, tmp_path):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("keep")
    first = m.start_avatar("keep").json()["data"]
    m.kill()  # SIGKILL to the supervisor and gunicorn; the worker has a session of its own
    assert psutil.pid_exists(first["pid"])
    assert requests.get(f"http://127.0.0.1:{first['port']}/health", timeout=2).status_code == 200

    again = manager(start=False, WORKER_MODULE="tests.fake_worker", **m.same_ports())
    again.start()
    adopted = again.info("keep")
    assert adopted["state"] == "RUNNING" and adopted["pid"] == first["pid"] and adopted["port"] == first["port"]
    joined = again.start_avatar("keep_user_2").json()["data"]
    assert joined["pid"] == first["pid"] and joined["connections"] == 2
    assert again.post("/avatar/stop", {"avatar_id": "keep"}).status_code == 200
    assert gone(first["pid"])


def test_connections_no_session_backs_are_dropped_after_the_stale_timeout(manager):
    """A backend that never disconnects must not pin an instance: the worker reports no live
    WebRTC session, so after STALE_CONNECTION_TIMEOUT its connections count as gone."""
    m = manager(WORKER_MODULE="tests.fake_worker", HEALTH_CHECK_INTERVAL="0.2", STALE_CONNECTION_TIMEOUT="1",
                IDLE_TIMEOUT="1")
    m.avatar("forgotten")
    first = m.start_avatar("forgotten_user_1").json()["data"]
    m.start_avatar("forgotten_user_2")
    wait_for(lambda: m.info("forgotten") is None, timeout=30, what="the forgotten instance to be reaped")
    assert gone(first["pid"])


def test_an_instance_with_a_live_session_is_never_idle(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", HEALTH_CHECK_INTERVAL="0.2", IDLE_TIMEOUT="0.5")
    m.avatar("watched", sessions=1)
    m.start_avatar("watched")
    wait_for(lambda: (i := m.info("watched")) and i["sessions"] == 1, what="the worker's session count")
    assert m.post("/avatar/disconnect", {"avatar_name": "watched"}).json()["data"]["connections"] == 0
    time.sleep(2)  # four idle timeouts
    assert m.info("watched")["state"] == "RUNNING"
    # The viewer leaves: the health checks go on, see it, and the idle instance is stopped.
    folder = m.data_dir / "avatars" / "watched"
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                    "sessions": 0}))
    wait_for(lambda: m.info("watched") is None, what="the instance stopped once nobody watches")


def test_an_exit_by_a_signal_is_told_by_the_signals_name(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("s")
    first = m.start_avatar("s").json()["data"]
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: (i := m.info("s")) and i["state"] == "RUNNING" and i["pid"] != first["pid"],
             what="the worker replaced")
    said = (m.log_dir / "manager.log").read_text()
    assert "s: the worker was killed by SIGKILL (the kernel's out-of-memory killer sends SIGKILL" in said
    assert "code -9" not in said


def test_an_exit_recorded_by_a_supervisor_that_died_is_carried_on_by_the_next(manager):
    """The supervisor wrote EXITED and was SIGKILLed before it could retry: the next leader finds
    the record holding its port and restarts the instance there, its users kept."""
    from avatar_manager.instances import State
    from avatar_manager.store.sqlite import SqliteStore

    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("e")
    first = m.start_avatar("e_user_1").json()["data"]
    m.start_avatar("e_user_2")
    m.kill()  # SIGKILL to the supervisor and gunicorn; the worker has a session of its own
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: gone(first["pid"]), what="the worker gone")
    store = SqliteStore(m.data_dir / "manager.sqlite3")
    exited = store.transition("e", {State.RUNNING}, State.EXITED, pid=0, failures=1,
                              error="the worker was killed by SIGKILL")
    store.close()
    assert exited is not None and exited.port == first["port"]

    again = manager(start=False, WORKER_MODULE="tests.fake_worker", **m.same_ports())
    again.start()
    restarted = wait_for(lambda: (i := again.info("e")) and i["state"] == "RUNNING" and i,
                         what="the instance restarted by the next leader")
    assert restarted["port"] == first["port"] and restarted["pid"] != first["pid"]
    assert restarted["connections"] == 2 and restarted["restarts"] == 1
