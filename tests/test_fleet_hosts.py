"""One fleet over several hosts: three hosts, each a network namespace with its own address
(harness/netns.py), one real redis-server, a host agent per host and the stateless API in a
namespace of its own; viewers and checks from outside the hosts.

Workers are the fault-injecting stand-in (tests/fake_worker.py, which fences itself as the real
one does) except where media must flow: there the real worker speaks with the offline voice.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
import requests

from harness.avatars import make_avatar
from harness.fleet import API_PORT, ROOT, Fleet
from harness.processes import wait_for
from harness.viewer import Viewer, loud_after

LOUD_RMS = 300


@pytest.fixture
def fleet(tmp_path):
    made: list[Fleet] = []

    def make(hosts: int = 3, **env) -> Fleet:
        try:
            made.append(Fleet(tmp_path, hosts, **env))
        except RuntimeError as exc:
            pytest.fail(str(exc))
        return made[-1]
    yield make
    for f in made:
        f.close()


def test_six_avatars_spread_over_three_hosts_and_stop_all_leaves_nothing(fleet):
    f = fleet()
    for n in range(6):
        make_avatar(f.data_dir, f"a{n}")
    started = [f.post("/avatar/start", {"avatar_id": f"a{n}"}) for n in range(6)]
    assert all(s.status_code == 200 for s in started), [s.text for s in started]
    data = [s.json()["data"] for s in started]
    assert sorted(d["host"] for d in data) == ["host1", "host1", "host2", "host2", "host3", "host3"]
    for d in data:  # each answers at its own host's address, which webrtc_url names
        host = f.host_of(d["host"])
        assert d["webrtc_url"] == f"http://{host.address}:{d['port']}/offer"
        assert f.serving(d["real_avatar_name"]) == [d["host"]]
    status = f.get("/status").json()["data"]
    assert {h["id"]: h["instances"] for h in status["hosts"]} == {"host1": 2, "host2": 2, "host3": 2}
    assert status["manager"]["max"] == 12

    assert f.post("/avatar/stop-all", {}).status_code == 200
    assert f.instances() == {}
    workers = [p for p in _processes() if "tests.fake_worker" in p]
    assert workers == []


def _processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()


def test_a_viewer_outside_hears_an_avatar_on_another_host_through_the_relay(fleet, demo_source):
    f = fleet(hosts=2, WORKER_MODULE="lipsync_worker")
    make_avatar(f.data_dir, "demo", source=demo_source)
    started = f.post("/avatar/start", {"avatar_id": "demo"})
    assert started.status_code == 200, started.text
    assert started.json()["data"]["host"] in ("host1", "host2")

    async def scenario():
        async with aiohttp.ClientSession() as http:
            viewer = await Viewer(f.url + "/avatar/demo").connect(http, timeout=20)
            try:
                said = time.monotonic()
                status, body = await viewer.post(http, "/human", text="Hello from another host.", type="echo")
                assert (status, body) == (200, {"code": 0, "msg": "ok"})
                deadline = time.monotonic() + 15
                while not loud_after(viewer.received.audio, said, LOUD_RMS) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert loud_after(viewer.received.audio, said, LOUD_RMS), "no speech arrived"
                assert viewer.received.video
            finally:
                await viewer.close()
    asyncio.run(scenario())


def test_a_host_that_dies_has_its_avatars_run_again_elsewhere_once_with_their_users(fleet):
    f = fleet()
    for n in range(3):
        make_avatar(f.data_dir, f"d{n}")
    for n in range(3):
        for user in (1, 2):
            assert f.post("/avatar/start", {"avatar_id": f"d{n}_user_{user}", "avatar_name": f"d{n}"}).status_code == 200
    before = f.instances()
    dead = before["d0"]["host"]
    on_dead = sorted(a for a, i in before.items() if i["host"] == dead)
    # The machine dies: its agent and its workers at once.
    agent = f.agents[dead]
    for name, i in before.items():
        if i["host"] == dead:
            os.kill(i["pid"], signal.SIGKILL)
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(timeout=10)

    def moved():
        now = f.instances()
        return now if all(now[a]["host"] != dead and now[a]["state"] == "RUNNING" for a in on_dead) else None
    # The host lease (5 s), then a start.
    after = wait_for(moved, timeout=25, what="the dead host's avatars running on the other hosts")
    for avatar in on_dead:
        assert after[avatar]["connections"] == 2
        assert f.serving(avatar) == [after[avatar]["host"]]
    status = {h["id"]: h["state"] for h in f.get("/status").json()["data"]["hosts"]}
    assert status[dead] == "lost"


def test_a_host_cut_off_fences_its_workers_and_no_avatar_ever_runs_twice(fleet):
    f = fleet()
    for n in range(3):
        make_avatar(f.data_dir, f"c{n}")
        assert f.post("/avatar/start", {"avatar_id": f"c{n}"}).status_code == 200
    before = f.instances()
    cut = before["c0"]["host"]
    on_cut = sorted(a for a, i in before.items() if i["host"] == cut)
    os.kill(f.agents[cut].pid, signal.SIGSTOP)  # alive, but renews nothing
    stopped = time.monotonic()
    twice: list[tuple[str, list[str]]] = []
    fenced_at = None
    while time.monotonic() - stopped < 25:
        for avatar in on_cut:
            where = f.serving(avatar)
            if len(where) > 1:
                twice.append((avatar, where))
        if fenced_at is None and not any(cut in f.serving(a) for a in on_cut):
            fenced_at = time.monotonic() - stopped
        now = f.instances()
        if fenced_at is not None and all(now[a]["state"] == "RUNNING" and now[a]["host"] != cut for a in on_cut):
            break
        time.sleep(0.1)
    assert twice == []
    assert fenced_at is not None and fenced_at < 5  # within the lease's TTL
    now = f.instances()
    assert all(now[a]["state"] == "RUNNING" and now[a]["host"] != cut and f.serving(a) == [now[a]["host"]]
               for a in on_cut), now
    os.kill(f.agents[cut].pid, signal.SIGCONT)
    # Back, it learns its avatars went elsewhere and starts none of them again.
    wait_for(lambda: {h["id"]: h["state"] for h in f.get("/status").json()["data"]["hosts"]}[cut] == "live",
             timeout=10, what="the cut-off host live again")
    watched = time.monotonic() + 5
    while time.monotonic() < watched:
        assert all(f.serving(a) == [now[a]["host"]] for a in on_cut)
        time.sleep(0.2)


def test_a_thousand_concurrent_starts_from_three_api_processes_respect_every_limit(fleet, tmp_path):
    # One GPU per host with 14 GB free; an instance takes 6 GB: two fit on each, whatever the
    # MAX_AVATARS of 3 would allow.
    f = fleet(nvml={"gpus": [{"name": "Fake GPU", "total_mb": 24000, "free_mb": 14000}]}, MAX_AVATARS="3",
              GPU_MIN_FREE_MB="6000")
    # Two more API processes, each in a namespace of its own.
    urls = [f.url]
    for n in range(2):
        host = f.net.add_host()
        host.spawn([sys.executable, "-m", "avatar_manager", "serve", "--role", "api"],
                   {**f.env, "HOST_ID": f"api{n}", "AVATAR_MANAGER_HOST": host.address,
                    "AVATAR_MANAGER_PORT": str(API_PORT), "LOG_DIR": str(tmp_path / f"logs-api{n}")}, ROOT,
                   tmp_path / f"api{n}.out")
        urls.append(f"http://{host.address}:{API_PORT}")
        wait_for(lambda u=urls[-1]: _up(u), timeout=30, what="another API process")
    avatars = [f"k{n}" for n in range(40)]
    for name in avatars:
        make_avatar(f.data_dir, name, avatar_model="musetalk", fault="gpu_mb:6000")

    def start(i: int) -> int:
        try:
            return requests.post(urls[i % 3] + "/avatar/start", json={"avatar_id": avatars[i % len(avatars)]},
                                 timeout=120).status_code
        except requests.RequestException:
            return -1
    with ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(start, range(1000)))
    assert set(codes) <= {200, 503}, sorted(set(codes))
    running = [i for i in f.instances().values() if i["state"] in ("STARTING", "RUNNING")]
    per_host: dict[str, list[dict]] = {}
    for i in running:
        per_host.setdefault(i["host"], []).append(i)
    assert len(running) == 6 and all(len(v) == 2 for v in per_host.values()), per_host
    for instances in per_host.values():
        assert len({i["port"] for i in instances}) == len(instances)
        assert all(i["gpu"] == 0 for i in instances)
    assert codes.count(200) >= 6


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False
