"""A fleet of three hosts: placement latency, a dead host's avatars healthy elsewhere, fencing.

    .venv/bin/python bench/fleet_bench.py [--claims 500] [--starts 30] [--runs 5]

Needs root (network namespaces). Three hosts on one machine (harness/fleet.py: a namespace each
with its own address, one real redis-server on the bridge, a host agent per host, the stateless
API in a namespace of its own), the fault-injecting stand-in worker (tests/fake_worker.py,
which fences itself as the real one does).
1. Placement, in the store alone: Store.claim of a new avatar against three hosts' offers on the
   same Redis (WATCH/MULTI, placement.place), --claims times, one after the other.
2. Placement through the API: POST /avatar/start of --starts new avatars, one after the other:
   the whole cold start (the claim across hosts, the agent's spawn, the worker's /health).
3. Host death, --runs times: six avatars with two users each (two on each host); SIGKILL to the agent of the
   host running the first one and to its workers (a machine that died); the time until every
   avatar of that host is RUNNING on another host and answers /health there.
4. Fencing, --runs times: SIGSTOP to that host's agent; the time until none of its workers
   answers any more, and until its avatars run elsewhere.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatar_manager import hosts as fleet_hosts  # noqa: E402
from avatar_manager.placement import Claim  # noqa: E402
from avatar_manager.store.redis import RedisStore  # noqa: E402
from bench.manager_bench import machine  # noqa: E402
from harness.avatars import make_avatar  # noqa: E402
from harness.fleet import Fleet  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def store_claims(fleet: Fleet, n: int) -> list[float]:
    store = RedisStore(fleet.redis_url, prefix=f"bench-{secrets.token_hex(4)}:")
    offers = fleet_hosts.live_hosts(RedisStore(fleet.redis_url))
    # Room for every claim on each host (a port each), as if every host had MAX_AVATARS >= n.
    offers = [fleet_hosts.Host(**{**h.__dict__, "max_instances": n, "ports": list(range(20000, 20000 + n))})
              for h in offers]
    times = []
    for i in range(n):
        claim = Claim(avatar=f"b{i}", instance_id=f"b{i}", token=secrets.token_hex(8), now=time.time(),
                      hosts=offers, min_free_mb=0, gpu_required=False)
        t0 = time.perf_counter()
        store.claim(claim)
        times.append((time.perf_counter() - t0) * 1000)
    store.close()
    return times


def api_starts(fleet: Fleet, n: int) -> list[float]:
    times = []
    for i in range(n):
        make_avatar(fleet.data_dir, f"s{i}")
        t0 = time.perf_counter()
        answer = fleet.post("/avatar/start", {"avatar_id": f"s{i}"})
        times.append((time.perf_counter() - t0) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"start s{i}: {answer.status_code} {answer.text[:200]}")
    fleet.post("/avatar/stop-all", {})
    return times


def host_death(fleet: Fleet, run: int, kind: str) -> dict:
    names = [f"{kind}{run}x{n}" for n in range(6)]  # two on each host
    for name in names:
        make_avatar(fleet.data_dir, name)
        for user in (1, 2):
            answer = fleet.post("/avatar/start", {"avatar_id": f"{name}_user_{user}", "avatar_name": name})
            if answer.status_code != 200:
                raise RuntimeError(f"start {name}: {answer.status_code} {answer.text[:200]}")
    before = fleet.instances()
    victim = before[names[0]]["host"]
    moved = [n for n in names if before[n]["host"] == victim]
    agent = fleet.agents[victim]
    t0 = time.monotonic()
    if kind == "dead":
        for n in moved:
            os.kill(before[n]["pid"], signal.SIGKILL)
        os.kill(agent.pid, signal.SIGKILL)
    else:
        os.kill(agent.pid, signal.SIGSTOP)
    fenced = None
    while time.monotonic() - t0 < 60:
        if fenced is None and not any(victim in fleet.serving(n) for n in moved):
            fenced = time.monotonic() - t0
        now = fleet.instances()
        if fenced is not None and all(now[n]["state"] == "RUNNING" and now[n]["host"] != victim
                                      and fleet.serving(n) == [now[n]["host"]] for n in moved):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"{kind} run {run}: the avatars of {victim} did not run elsewhere within 60 s")
    healthy = time.monotonic() - t0
    connections = [fleet.instances()[n]["connections"] for n in moved]
    # The host comes back for the next run: a new agent (dead) or the same one, continued.
    if kind == "dead":
        agent.wait(timeout=10)
        fleet.start_agent(victim, fleet.host_of(victim))
    else:
        os.kill(agent.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while {h["id"]: h["state"] for h in fleet.get("/status").json()["data"]["hosts"]}.get(victim) != "live":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{victim} not live again")
        time.sleep(0.1)
    fleet.post("/avatar/stop-all", {})
    return {"moved": len(moved), "fenced": fenced, "healthy": healthy, "connections": connections}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp), hosts=3, MAX_AVATARS="40")
        try:
            claims = store_claims(fleet, args.claims)
            starts = api_starts(fleet, args.starts)
            deaths = [host_death(fleet, run, "dead") for run in range(args.runs)]
            cuts = [host_death(fleet, run, "cut") for run in range(args.runs)]
        finally:
            fleet.close()
    print(f"Machine: {machine()}\n")
    print("| placement | n | p50 ms | p90 ms | max ms |\n|---|---|---|---|---|")
    for label, values in (("Store.claim, 3 hosts (Redis WATCH/MULTI)", claims),
                          ("POST /avatar/start, cold, through the API", starts)):
        print(f"| {label} | {len(values)} | {statistics.median(values):.1f} | {pct(values, 0.9):.1f} "
              f"| {max(values):.1f} |")
    print("\n| run | host | avatars moved | fenced s | all healthy elsewhere s | connections kept |")
    print("|---|---|---|---|---|---|")
    for kind, runs in (("SIGKILL agent and workers", deaths), ("SIGSTOP agent", cuts)):
        for n, r in enumerate(runs, 1):
            print(f"| {n} | {kind} | {r['moved']} | {r['fenced']:.2f} | {r['healthy']:.2f} | {r['connections']} |")
    for kind, runs in (("SIGKILL", deaths), ("SIGSTOP", cuts)):
        print(f"\n{kind}: fenced p50 {statistics.median(r['fenced'] for r in runs):.2f} s, all healthy elsewhere "
              f"p50 {statistics.median(r['healthy'] for r in runs):.2f} s, max {max(r['healthy'] for r in runs):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
