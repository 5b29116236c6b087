"""Avatar manager: warm pooled starts under concurrency, during a cold start, and cold starts.

    .venv/bin/python bench/manager_bench.py [--clients 1 8 32] [--rates 320 800] [--seconds 5]
                                            [--cold-runs 5] [--slow-starts 3]
                                            [--web-concurrency N]

Real managers (`python -m avatar_manager`: supervisor + gunicorn), each with its own temporary
AVATAR_DATA_DIR and LOG_DIR and free ports, defaults otherwise; measured over HTTP on loopback.
WORKER_MODULE is one setting per manager, so there are two phases:
1. the real `lipsync_worker` with the bundled portrait prepared as avatar `demo`:
   - cold start to ready: POST /avatar/start for the stopped avatar, on a new connection, until
     its 200 (the handler returns once the worker answers /health), --cold-runs times, with
     POST /avatar/stop between runs; spawn to ready is the supervisor's own measurement, the
     growth of /metrics avatar_start_seconds_sum over the run;
   - warm pooled start: POST /avatar/start for `demo` while it is RUNNING, each client thread on
     one persistent (keep-alive) HTTP/1.1 connection, for --seconds after a warm-up. Each call
     adds a connection to the instance, as a user joining. Two kinds of load:
     back to back (closed loop: 1, 8, 32 clients, each sends as soon as its last answer came),
     which finds the throughput, and whose mean latency is clients / throughput by Little's law;
     paced (open loop: 32 clients offering --rates requests/s together, at exponentially spaced
     times, each request timed from when it was due), the latency at a given demand.
2. `tests.fake_worker` (the fault-injection worker): avatar `warm` RUNNING, and avatar `slow`
   whose config.json has "fault": "slow:5", a worker that sleeps 5 s before it listens. Each warm
   load at 32 clients, alone, then while `slow` cold-starts (--slow-starts times): only requests
   issued while /avatar/info/slow reported STARTING count (between the first poll that saw
   STARTING and the last one that did, polled every 50 ms).
The clients are threads of this process speaking HTTP/1.1 over raw sockets (a request is a few
tens of microseconds of Python), so on a small host they share its cores with the manager. The
CPU that other processes took during the measurements is printed last: a busy neighbour on a
2-core host shows up as tail latency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.avatars import prepare_portrait  # noqa: E402
from harness.manager import Manager, checked, with_managers  # noqa: E402
from harness.stats import percentile  # noqa: E402

TIMEOUT = 120.0          # one request, cold starts included
WARMUP = 0.5             # seconds of load discarded before a warm measurement
POLL = 0.05


# --- HTTP --------------------------------------------------------------------------------------

class Closed(Exception):
    """The server closed the connection before answering."""


class Connection:
    """One keep-alive HTTP/1.1 connection, with as little client work as possible per request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""
        self.reconnects = -1          # the first connect is not a reconnect

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.reconnects += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        data = head.encode() + b"\r\n" + payload
        for attempt in range(2):
            if self.sock is None:
                self._connect()
            try:
                self.sock.sendall(data)
                return self._response()
            except (Closed, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed while idle: once more on a new one.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed()
        self.buf += chunk

    def _response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get(b"transfer-encoding") == b"chunked":
            raise RuntimeError("chunked responses are not expected from the manager")
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < length:
            self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        if headers.get(b"connection") == b"close":
            self.close()
        return status, body


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict | bytes]:
    """One request on a connection of its own; JSON bodies decoded."""
    connection = Connection(port)
    try:
        status, raw = connection.request(method, path, body)
    finally:
        connection.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


# --- the manager -------------------------------------------------------------------------------

def start(manager: Manager, avatar: str) -> dict:
    """POST /avatar/start for `avatar`; its instance. The worker is remembered, so the manager's
    stop() makes sure of it even if the manager dies first."""
    instance = checked(manager.start_avatar(avatar)).json()["data"]
    manager.remember_tree()
    return instance


# --- load ----------------------------------------------------------------------------------------

class Load:
    """`clients` threads, each POSTing /avatar/start for `avatar` on its own keep-alive
    connection, recording (issued, seconds, status) for every request. Back to back (a closed
    loop) by default; with `rate`, each client sends at exponentially spaced times so that all
    together offer `rate` requests/s (an open loop), and a request is timed from when it was due,
    so a late client does not hide queueing."""

    def __init__(self, port: int, avatar: str, clients: int, rate: float | None = None) -> None:
        self.port, self.avatar, self.clients, self.rate = port, avatar, clients, rate
        self.stopping = threading.Event()
        self.samples: list[list[tuple[float, float, int]]] = [[] for _ in range(clients)]
        self.errors: list[str] = []
        self.reconnects: list[int] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        self._ready = threading.Barrier(clients + 1)

    def _client(self, index: int) -> None:
        connection = Connection(self.port)
        out = self.samples[index]
        body = {"avatar_id": self.avatar}
        gaps = random.Random(index)
        try:
            connection.request("GET", "/health")   # connect before the clock starts
            self._ready.wait()
            due = time.perf_counter()
            while not self.stopping.is_set():
                if self.rate:
                    due += gaps.expovariate(self.rate / self.clients)
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    issued = due
                else:
                    issued = time.perf_counter()
                status, _ = connection.request("POST", "/avatar/start", body)
                out.append((issued, time.perf_counter() - issued, status))
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:  # reported, and the measurement refuses to pass for good
            self.errors.append(f"client {index}: {type(exc).__name__}: {exc}")
            self._ready.abort()
        finally:
            self.reconnects.append(connection.reconnects)
            connection.close()

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        try:
            self._ready.wait(timeout=30)
        except threading.BrokenBarrierError:
            self.stopping.set()
            raise RuntimeError(f"clients could not connect: {self.errors}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=TIMEOUT)

    def issued_between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [s for client in self.samples for s in client if start <= s[0] < end]


class HostCpu:
    """CPU that processes other than this bench and its manager used during a measurement, in %
    of one core: the host is shared, and a busy neighbour shows up as tail latency."""
    worst = 0.0

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def _ours(self) -> dict[int, tuple[psutil.Process, float]]:
        procs = [psutil.Process()]
        try:
            root = psutil.Process(self.manager.proc.pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
        ours = {}
        for p in procs:
            try:
                ours[p.pid] = (p, sum(p.cpu_times()[:4]))
            except psutil.Error:
                pass
        return ours

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def __enter__(self) -> "HostCpu":
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc) -> None:
        ours = 0.0
        for pid, (p, cpu1) in self._ours().items():  # a process born meanwhile counts from 0
            ours += cpu1 - self.ours0.get(pid, (p, 0.0))[1]
        other = (self._busy() - self.busy0 - ours) / (time.perf_counter() - self.t0) * 100
        HostCpu.worst = max(HostCpu.worst, other)


def summary(samples: list[tuple[float, float, int]], window: float) -> dict:
    latencies = sorted(1000 * s[1] for s in samples)
    if not latencies:
        raise RuntimeError("no request was measured")
    return {"n": len(latencies), "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99), "mean": statistics.fmean(latencies),
            "max": latencies[-1], "rps": len(latencies) / window, "errors": sum(s[2] != 200 for s in samples)}


def warm(manager: Manager, avatar: str, clients: int, seconds: float, rate: float | None = None) -> dict:
    with HostCpu(manager), Load(manager.port, avatar, clients, rate) as load:
        time.sleep(WARMUP)
        start = time.perf_counter()
        time.sleep(seconds)
        end = time.perf_counter()
    if load.errors:
        raise RuntimeError("; ".join(load.errors))
    return {**summary(load.issued_between(start, end), end - start), "reconnects": sum(load.reconnects)}


def warm_during_cold(manager: Manager, warm_avatar: str, cold_avatar: str, clients: int, starts: int,
                     rate: float | None = None) -> dict:
    """The warm load while `cold_avatar` cold-starts, `starts` times."""
    during, window, colds, reconnects = [], 0.0, [], 0
    for _ in range(starts):
        cold: dict = {}

        def start_cold(cold: dict = cold) -> None:
            t0 = time.perf_counter()
            try:
                cold["status"], cold["body"] = call(manager.port, "POST", "/avatar/start", {"avatar_id": cold_avatar})
            finally:
                cold["seconds"] = time.perf_counter() - t0

        monitor = Connection(manager.port)
        with HostCpu(manager), Load(manager.port, warm_avatar, clients, rate) as load:
            time.sleep(WARMUP)
            starter = threading.Thread(target=start_cold, daemon=True)
            starter.start()
            first = last = None
            deadline = time.perf_counter() + TIMEOUT
            while time.perf_counter() < deadline:
                asked = time.perf_counter()
                status, raw = monitor.request("GET", f"/avatar/info/{cold_avatar}")
                state = json.loads(raw).get("data", {}).get("state") if status == 200 else None
                if state == "STARTING":
                    first = first if first is not None else time.perf_counter()
                    last = asked
                elif first is not None or not starter.is_alive():
                    break
                time.sleep(POLL)
            starter.join(timeout=TIMEOUT)
            time.sleep(0.2)
        monitor.close()
        if load.errors:
            raise RuntimeError("; ".join(load.errors))
        if cold.get("status") != 200:
            raise RuntimeError(f"the cold start of {cold_avatar} failed: {cold.get('status')} {cold.get('body')}")
        if first is None or last is None or last <= first:
            raise RuntimeError(f"{cold_avatar} was never seen STARTING")
        during += load.issued_between(first, last)
        window += last - first
        colds.append(cold["seconds"])
        reconnects += sum(load.reconnects)
        checked(manager.stop_avatar(cold_avatar))
    return {**summary(during, window), "reconnects": reconnects, "cold": colds, "starting_s": window / starts}


def cold_starts(manager: Manager, avatar: str, runs: int) -> list[dict]:
    rows = []
    for _ in range(runs):
        before = manager.metrics()
        t0 = time.perf_counter()
        status, body = call(manager.port, "POST", "/avatar/start", {"avatar_id": avatar})
        seconds = time.perf_counter() - t0
        if status != 200 or not body["data"]["is_new"]:
            raise RuntimeError(f"cold start of {avatar}: {status} {body}")
        manager.remember_tree()
        after = manager.metrics()
        rows.append({"http": seconds, "spawn": after["avatar_start_seconds_sum"] - before.get(
            "avatar_start_seconds_sum", 0.0)})
        checked(manager.stop_avatar(avatar))
    return rows


# --- report --------------------------------------------------------------------------------------

def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    ram = psutil.virtual_memory().total / 2 ** 30
    return (f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB, Python {platform.python_version()}; "
            f"{time.strftime('%Y-%m-%d')}")


def row(label: str, r: dict) -> str:
    return (f"| {label} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['mean']:.1f} | {r['max']:.0f} "
            f"| {r['rps']:.0f} | {r['errors']} |")


HEADER = ("| clients | requests | p50 ms | p99 ms | mean ms | max ms | requests/s | non-200 |\n"
          "|---|---|---|---|---|---|---|---|")


def print_cold(cold_rows: list[dict]) -> None:
    http = sorted(r["http"] for r in cold_rows)
    print(f"\nCold start to ready: POST /avatar/start for stopped `demo` (real lipsync_worker, puppet engine), "
          f"{len(cold_rows)} runs, POST /avatar/stop between\n")
    print("| run | HTTP round trip to 200 s | spawn to ready s (/metrics) |")
    print("|---|---|---|")
    for i, r in enumerate(cold_rows, 1):
        print(f"| {i} | {r['http']:.2f} | {r['spawn']:.2f} |")
    print(f"| p50 (max) | {statistics.median(http):.2f} ({http[-1]:.2f}) "
          f"| {statistics.median(r['spawn'] for r in cold_rows):.2f} "
          f"({max(r['spawn'] for r in cold_rows):.2f}) |", flush=True)


def run(args, tmp: Path, managers: list[Manager]) -> None:
    env = {}
    if args.web_concurrency:
        env["WEB_CONCURRENCY"] = str(args.web_concurrency)
    gunicorn = f"gunicorn gevent, WEB_CONCURRENCY={args.web_concurrency or 'default (2)'}"
    print(f"machine: {machine()}; {gunicorn}; SQLite store", flush=True)
    busy = psutil.cpu_percent(interval=1.0) * (os.cpu_count() or 1)
    print(f"host before the run: {busy:.0f}% of one core busy", flush=True)
    paced = [(args.during_clients, rate) for rate in args.rates]

    if not args.skip_real:
        real = Manager(tmp / "real", env, test_settings=False)
        managers.append(real)
        prepare_portrait(real.data_dir)
        real.start()
        if args.cold_runs:
            print_cold(cold_starts(real, "demo", args.cold_runs))
        start(real, "demo")
        print("\nWarm pooled start: POST /avatar/start for `demo` while RUNNING (real lipsync_worker), "
              f"{args.seconds:g} s per row, one keep-alive connection per client; back to back, then paced\n")
        print(HEADER)
        for clients in args.clients:
            print(row(f"{clients} back to back", warm(real, "demo", clients, args.seconds)), flush=True)
        for clients, rate in paced:
            print(row(f"{clients} at {rate:g} req/s", warm(real, "demo", clients, args.seconds, rate)), flush=True)
        real.stop()

    if args.slow_starts:
        fake = Manager(tmp / "fake", {**env, "WORKER_MODULE": "tests.fake_worker"}, test_settings=False)
        managers.append(fake)
        fake.avatar("warm")
        fake.avatar("slow", fault="slow:5")
        fake.start()
        start(fake, "warm")
        rows, colds, starting = [], [], []
        for clients, rate in [(args.during_clients, None), *paced]:
            label = f"{clients} {'back to back' if rate is None else f'at {rate:g} req/s'}"
            alone = warm(fake, "warm", clients, args.seconds, rate)
            during = warm_during_cold(fake, "warm", "slow", clients, args.slow_starts, rate)
            rows += [row(f"{label}, no cold start", alone), row(f"{label}, during a 5 s cold start", during)]
            colds += during["cold"]
            starting.append(during["starting_s"])
        fake.stop()
        print(f"\nWarm pooled start (tests.fake_worker), alone and while another avatar cold-starts "
              f"(\"fault\": \"slow:5\"; {len(colds)} starts, {min(colds):.2f}-{max(colds):.2f} s to their 200; "
              f"only requests issued while it was seen STARTING count, {statistics.fmean(starting):.1f} s a start)\n")
        print(HEADER)
        for line in rows:
            print(line)
    print(f"\nother processes on the host used up to {HostCpu.worst:.0f}% of one core during a measurement",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per warm row")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--slow-starts", type=int, default=3, help="5 s cold starts under warm load (0: skip)")
    parser.add_argument("--during-clients", type=int, default=32, help="clients of the paced rows and "
                        "of the rows during a cold start")
    parser.add_argument("--rates", type=float, nargs="*", default=[320.0, 800.0],
                        help="total requests/s of the paced (open-loop) rows")
    parser.add_argument("--skip-real", action="store_true", help="only the fake-worker phase")
    parser.add_argument("--web-concurrency", type=int, help="WEB_CONCURRENCY for the manager's gunicorn")
    args = parser.parse_args()
    # Client threads hand the GIL over sooner than the default 5 ms, so it adds little latency.
    sys.setswitchinterval(0.0005)

    with_managers(run, args, "manager-bench-")


if __name__ == "__main__":
    main()
