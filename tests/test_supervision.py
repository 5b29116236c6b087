"""The supervisor leaves no process behind: a worker that ignores SIGTERM is SIGKILLed after the
grace period, a worker's forked helpers go with it, a manager stopped by SIGTERM or by a
terminal's Ctrl-C takes its whole tree down (workers in sessions of their own, TTS servers,
gunicorn) and exits 0, and gunicorn recycling its workers orphans nothing.

"Gone" means exited and reaped: a zombie is not gone. psutil.Process.is_running() is True for a
zombie and False for a pid reused by another process, so it is the check.

Run as a program (WORKER_MODULE=tests.test_supervision), this file is a worker shim: it execs
the worker the avatar's config.json names ("worker": "fake" -> tests.fake_worker, otherwise the
real lipsync_worker), so one manager can run both; exec keeps the pid the supervisor spawned.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from avatar_manager import ports
from harness.avatars import make_avatar
from harness.manager import Manager
from harness.processes import wait_for

ROOT = Path(__file__).resolve().parent.parent
SHIM = "tests.test_supervision"
OUR_MODULES = ("avatar_manager", "gunicorn", "lipsync_worker", "tests.fake_worker", "tts_services", "asr_services", SHIM)


# --- helpers -------------------------------------------------------------------------------------

def health(port: int) -> dict:
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return "?"


def describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid} ({p.status()}, ppid {p.ppid()}): {cmdline(p)}"
    except psutil.Error:
        return f"pid {p.pid} (gone)"


def wait_gone(procs: list[psutil.Process], timeout: float = 15.0, what: str = "processes") -> None:
    """Until every one of procs has exited and been reaped; the survivors named otherwise."""
    try:
        wait_for(lambda: not any(p.is_running() for p in procs), timeout=timeout, what=f"{what} to be gone")
    except AssertionError:
        left = [describe(p) for p in procs if p.is_running()]
        raise AssertionError(f"{len(left)} of the {what} still there after {timeout:g} s:\n" + "\n".join(left)) \
            from None


def kill_all(procs: list[psutil.Process]) -> None:
    """Cleanup of processes a test made (through the manager) that the code under test left."""
    for p in procs:
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass


def zombies(parents: list[psutil.Process]) -> list[str]:
    out = []
    for parent in parents:
        try:
            out += [describe(c) for c in parent.children() if c.status() == psutil.STATUS_ZOMBIE]
        except psutil.Error:
            pass
    return out


def orphans_of(m: Manager) -> list[str]:
    """Processes of this manager's fleet (same AVATAR_DATA_DIR, one of our programs) that were
    re-parented to init: nobody would ever stop or reap them."""
    data_dir = str(m.data_dir.resolve())
    found = []
    for p in psutil.process_iter(["ppid"]):
        try:
            if p.info["ppid"] != 1 or not any(mod in cmdline(p) for mod in OUR_MODULES):
                continue
            if str(Path(p.environ().get("AVATAR_DATA_DIR", "/nonexistent")).resolve()) == data_dir:
                found.append(describe(p))
        except psutil.Error:
            pass
    return found


def gunicorn_master(m: Manager) -> psutil.Process:
    return next(p for p in psutil.Process(m.proc.pid).children() if "gunicorn" in cmdline(p))


# --- one worker ------------------------------------------------------------------------------------

def test_a_worker_that_ignores_sigterm_is_sigkilled_after_the_grace_period(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", STOP_TIMEOUT=1)
    m.avatar("stubborn", fault="ignore_term")
    started = m.start_avatar("stubborn").json()["data"]
    worker = psutil.Process(started["pid"])
    assert worker.is_running() and health(started["port"])["pid"] == started["pid"]

    stopped = m.post("/avatar/stop", {"avatar_id": "stubborn"})
    assert stopped.status_code == 200, stopped.text
    wait_gone([worker], what="worker that ignores SIGTERM")
    assert ports.is_free(started["port"])
    assert m.info("stubborn") is None
    # It took the SIGKILL path, not a polite exit.
    assert "after SIGTERM; sending SIGKILL" in (m.log_dir / "manager.log").read_text()


def test_a_stopped_worker_takes_its_forked_helpers_with_it(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("forker", fault="fork:3")
    started = m.start_avatar("forker").json()["data"]
    helpers = [psutil.Process(pid) for pid in health(started["port"])["children"]]
    family = [psutil.Process(started["pid"]), *helpers]
    assert len(helpers) == 3 and all(p.is_running() for p in family)
    assert all(p.ppid() == started["pid"] for p in helpers)

    stopped = m.post("/avatar/stop", {"avatar_id": "forker"})
    assert stopped.status_code == 200, stopped.text
    wait_gone(family, what="worker and its 3 forked helpers")
    assert ports.is_free(started["port"])


def test_a_crashed_workers_forked_helpers_die_with_it(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("forker", fault="fork:3")
    first = m.start_avatar("forker").json()["data"]
    helpers = [psutil.Process(pid) for pid in health(first["port"])["children"]]
    assert len(helpers) == 3
    try:
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_for(lambda: (i := m.info("forker")) and i["state"] == "RUNNING" and i["pid"] != first["pid"]
                         and i, what="a replacement worker")
        replacement_helpers = health(again["port"])["children"]
        assert len(replacement_helpers) == 3 and not set(replacement_helpers) & {p.pid for p in helpers}
        wait_gone(helpers, timeout=5, what="crashed worker's 3 forked helpers")
    finally:
        kill_all(helpers)  # so the fixture's teardown checks the rest, not this known leak


# --- the whole manager -----------------------------------------------------------------------------

def test_sigterm_stops_every_worker_tts_and_asr_server_and_gunicorn_and_exits_0(manager, demo_source):
    m = manager(start=False, WORKER_MODULE=SHIM, STOP_TIMEOUT=1)
    make_avatar(m.data_dir, "demo", source=demo_source)          # the real worker, espeak voice
    # The fake worker makes the shutdown harder: it ignores SIGTERM and has forked helpers; its
    # voice is another model, so two TTS servers run.
    m.avatar("fake", worker="fake", fault=["ignore_term", "fork:2"], tts_model="edgetts")
    ours = {"espeak", "edgetts"}
    for model in ours:  # a server already there would be used, not owned
        assert ports.is_free(m.tts_port(model)), f"something already listens on {model}'s TTS port"
    m.start()
    real = m.start_avatar("demo").json()["data"]
    fake = m.start_avatar("fake").json()["data"]
    assert real["state"] == fake["state"] == "RUNNING"

    tree = m.tree()  # before the SIGTERM: the manager, gunicorn, workers, their helpers, TTS servers
    by_pid = {p.pid: cmdline(p) for p in tree}
    for worker, module in ((real, "-m lipsync_worker"), (fake, "-m tests.fake_worker")):
        assert module in by_pid[worker["pid"]]
        assert psutil.Process(worker["pid"]).ppid() == m.proc.pid      # a child of the supervisor ...
        assert os.getsid(worker["pid"]) == worker["pid"]               # ... in a session of its own
    assert health(real["port"])["engine"] == "puppet"
    helpers = health(fake["port"])["children"]
    assert len(helpers) == 2 and set(helpers) <= set(by_pid)
    assert sum("gunicorn" in c for c in by_pid.values()) == 3              # master + 2 workers
    tts = {c.split("--model ")[1].split()[0] for c in by_pid.values() if "-m tts_services" in c}
    assert tts == ours
    asr = [c.split("--model ")[1].split()[0] for c in by_pid.values() if "-m asr_services" in c]
    assert asr == ["sphinx"]  # both avatars' default

    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=60) == 0
    wait_gone(tree, what=f"{len(tree)} processes of the manager's tree")
    assert not orphans_of(m)
    assert ports.is_free(real["port"]) and ports.is_free(fake["port"]) and ports.is_free(m.port)


def test_ctrl_c_to_the_managers_process_group_stops_everything(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", STOP_TIMEOUT=1)
    m.avatar("a")
    m.avatar("b", fault="fork:2")
    a = m.start_avatar("a").json()["data"]
    b = m.start_avatar("b").json()["data"]
    tree = m.tree()
    assert {a["pid"], b["pid"], *health(b["port"])["children"]} <= {p.pid for p in tree}

    os.killpg(m.proc.pid, signal.SIGINT)   # as a terminal does: the workers' own sessions get nothing
    assert m.proc.wait(timeout=60) == 0
    wait_gone(tree, what=f"{len(tree)} processes of the manager's tree")
    assert not orphans_of(m)
    assert ports.is_free(a["port"]) and ports.is_free(b["port"]) and ports.is_free(m.port)


def test_gunicorn_recycling_its_workers_orphans_nothing(manager):
    m = manager(WORKER_MODULE="tests.fake_worker", GUNICORN_MAX_REQUESTS=20, WEB_CONCURRENCY=1)
    m.avatar("steady")
    first = m.start_avatar("steady").json()["data"]
    supervisor = psutil.Process(m.proc.pid)
    master = gunicorn_master(m)
    seen: dict[int, psutil.Process] = {}
    joins = 0
    # A gevent worker past max_requests goes on serving until its loop notices (about a second),
    # so recycling is counted over time, not over a fixed number of requests.
    deadline = time.monotonic() + 60
    for i in itertools.count():
        for p in master.children():
            seen.setdefault(p.pid, p)
        if len(seen) >= 3 or time.monotonic() > deadline:
            break
        if i % 2:
            answer = m.start_avatar(f"steady_user_{i}")
            joins += 1
        else:
            answer = m.get("/avatar/list")
        assert answer.status_code == 200, answer.text
    for p in master.children():
        seen.setdefault(p.pid, p)
    assert len(seen) >= 3, f"gunicorn did not recycle its worker: pids {sorted(seen)}"
    assert gunicorn_master(m).pid == master.pid

    # The avatar's worker never noticed: same process, still the supervisor's child.
    now = m.info("steady")
    assert now["state"] == "RUNNING" and now["pid"] == first["pid"] and now["connections"] == 1 + joins
    assert psutil.Process(first["pid"]).ppid() == supervisor.pid
    assert health(first["port"])["pid"] == first["pid"]
    # The recycled gunicorn workers were reaped by their master; nothing went to init.
    current = {p.pid for p in master.children()}
    wait_gone([p for pid, p in seen.items() if pid not in current], what="recycled gunicorn workers")
    wait_for(lambda: not zombies([supervisor, master]), timeout=5, what="no zombie children")
    assert not orphans_of(m)


# --- the worker shim (WORKER_MODULE=tests.test_supervision) ----------------------------------------

def _exec_worker() -> None:
    argv = sys.argv[1:]
    name = next(a.removeprefix("--avatar_id=") for a in argv if a.startswith("--avatar_id="))
    config = json.loads((Path(os.environ["AVATAR_DATA_DIR"]) / "avatars" / name / "config.json").read_text())
    module = "tests.fake_worker" if config.get("worker") == "fake" else "lipsync_worker"
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


if __name__ == "__main__":
    _exec_worker()


def test_an_exit_is_told_by_its_code_or_its_signals_name():
    from avatar_manager.procs import how_it_ended

    def ended(*argv: str, kill: int | None = None) -> str:
        proc = subprocess.Popen([sys.executable, "-c", *argv])
        if kill is not None:
            proc.send_signal(kill)
        proc.wait(timeout=20)
        return how_it_ended(proc)

    assert ended("raise SystemExit(3)") == "exited with code 3"
    killed = ended("import time; time.sleep(30)", kill=signal.SIGKILL)
    assert killed.startswith("was killed by SIGKILL") and "out-of-memory" in killed
    assert ended("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)") == "was killed by SIGSEGV"
    assert "unknown" in how_it_ended(psutil.Process())
