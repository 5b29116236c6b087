"""Avatar manager: time from SIGKILL of a worker to a healthy replacement.

    .venv/bin/python bench/recovery_bench.py [--runs 10] [--gap 3] [--poll-ms 10]

A real manager (`python -m avatar_manager`: supervisor + gunicorn) with its own temporary
AVATAR_DATA_DIR, LOG_DIR and free ports (TTS ones too), running the real `lipsync_worker`
(puppet engine) for the bundled portrait prepared as avatar `demo`. Each run:
1. the worker's pid from GET /avatar/info/demo (RUNNING), its instance token from its /health;
2. SIGKILL to that pid (t0);
3. GET /avatar/info/demo every --poll-ms on one keep-alive connection: "exit noticed" is the
   first answer whose state is not RUNNING (or whose pid changed); "replacement spawned" the
   first STARTING answer with a new pid (the backoff is over); "healthy replacement" is the
   first answer that is RUNNING with a new pid, whose port's /health then answers with the same
   instance token and that new pid.
Between runs: POST /avatar/restart (it resets the instance's failure count) and --gap seconds of
rest, so every run measures the first-crash path: one crash in a row, supervisor.backoff_delay(1)
= 0.5 s before the respawn (each later crash in a row doubles it until the worker has stayed up
STAYED_UP = 60 s). Everything is stopped at the end, on errors and Ctrl-C too.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.manager_bench import Connection, call, machine, start  # noqa: E402
from harness.avatars import prepare_portrait  # noqa: E402
from harness.manager import Manager, with_managers  # noqa: E402

AVATAR = "demo"
TIMEOUT = 60.0      # one recovery, at most


def info(connection: Connection) -> dict:
    status, raw = connection.request("GET", f"/avatar/info/{AVATAR}")
    if status != 200:
        raise RuntimeError(f"GET /avatar/info/{AVATAR}: {status} {raw[:200]!r}")
    return json.loads(raw)["data"]


def worker_health(port: int) -> dict | None:
    try:
        status, body = call(port, "GET", "/health")
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


def one_run(manager: Manager, poll: float) -> dict:
    connection = Connection(manager.port)
    try:
        before = info(connection)
        if before["state"] != "RUNNING":
            raise RuntimeError(f"{AVATAR} is {before['state']}, not RUNNING, before the kill")
        health = worker_health(before["port"])
        if not health or health.get("pid") != before["pid"]:
            raise RuntimeError(f"the worker on port {before['port']} does not answer as pid {before['pid']}: {health}")
        token, old_pid = health["instance_token"], before["pid"]

        t0 = time.perf_counter()
        os.kill(old_pid, signal.SIGKILL)
        noticed = respawned = healthy = None
        states = []
        deadline = t0 + TIMEOUT
        while time.perf_counter() < deadline:
            now = info(connection)
            elapsed = time.perf_counter() - t0
            if not states or states[-1] != now["state"]:
                states.append(now["state"])
            if noticed is None and (now["state"] != "RUNNING" or now["pid"] != old_pid):
                noticed = elapsed
            if respawned is None and now["state"] == "STARTING" and now["pid"] not in (None, old_pid):
                respawned = elapsed
            if now["state"] == "RUNNING" and now["pid"] not in (None, old_pid):
                answer = worker_health(now["port"])
                if answer and answer.get("instance_token") == token and answer.get("pid") == now["pid"]:
                    healthy = time.perf_counter() - t0
                    break
            if now["state"] == "FAILED":
                raise RuntimeError(f"{AVATAR} went FAILED: {now.get('error')}")
            time.sleep(poll)
        if noticed is None or healthy is None:
            raise RuntimeError(f"no healthy replacement within {TIMEOUT:g} s (states seen: {states})")
        manager.remember_tree()
        return {"noticed": noticed, "respawned": respawned if respawned is not None else float("nan"),
                "healthy": healthy, "old_pid": old_pid, "new_pid": now["pid"],
                "states": states}
    finally:
        connection.close()


def restart(manager: Manager) -> None:
    status, body = call(manager.port, "POST", "/avatar/restart", {"avatar_id": AVATAR})
    if status != 200 or body["data"]["state"] != "RUNNING":
        raise RuntimeError(f"POST /avatar/restart: {status} {body}")
    manager.remember_tree()


def report(rows: list[dict], args) -> None:
    noticed = sorted(1000 * r["noticed"] for r in rows)
    healthy = sorted(r["healthy"] for r in rows)
    print(f"\nSIGKILL of the worker to a healthy replacement: real lipsync_worker (puppet engine), avatar "
          f"`{AVATAR}`, {len(rows)} runs; /avatar/info polled every {args.poll_ms:g} ms; POST /avatar/restart "
          f"and {args.gap:g} s of rest between runs, so each run is the first crash in a row (0.5 s backoff)\n")
    # A replacement spawned and healthy between two polls was never seen in between: left out.
    respawned = sorted(r["respawned"] for r in rows if not math.isnan(r["respawned"]))
    print("| run | kill -> exit noticed ms | kill -> replacement spawned s | kill -> healthy replacement s "
          "| states seen |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {1000 * r['noticed']:.0f} | {r['respawned']:.2f} | {r['healthy']:.2f} "
              f"| {' -> '.join(r['states'])} |")
    unseen = len(rows) - len(respawned)
    spawned = (f"{statistics.median(respawned):.2f}", f"{respawned[-1]:.2f}") if respawned else ("-", "-")
    note = f"spawn not seen in {unseen} run(s)" if unseen else ""
    print(f"| p50 | {statistics.median(noticed):.0f} | {spawned[0]} | {statistics.median(healthy):.2f} | {note} |")
    print(f"| max | {noticed[-1]:.0f} | {spawned[1]} | {healthy[-1]:.2f} | |", flush=True)


def run(args, tmp: Path, managers: list[Manager]) -> None:
    # TTS ports of its own: it neither uses nor adopts another's.
    manager = Manager(tmp / "manager", {}, test_settings=False)
    managers.append(manager)
    print(f"machine: {machine()}; SQLite store", flush=True)
    prepare_portrait(manager.data_dir, AVATAR)
    manager.start()
    started = start(manager, AVATAR)
    print(f"`{AVATAR}` RUNNING as pid {started['pid']} on port {started['port']}", flush=True)
    rows = []
    for i in range(args.runs):
        if i:
            restart(manager)
        time.sleep(args.gap)
        rows.append(one_run(manager, args.poll_ms / 1000))
        r = rows[-1]
        print(f"run {i + 1}: pid {r['old_pid']} -> {r['new_pid']}: noticed {1000 * r['noticed']:.0f} ms, "
              f"healthy {r['healthy']:.2f} s", flush=True)
    report(rows, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds of rest before each kill")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="how often /avatar/info is asked")
    args = parser.parse_args()

    with_managers(run, args, "recovery-bench-")

if __name__ == "__main__":
    main()
