"""Several hosts on one machine: network namespaces joined by a bridge, addressed from
198.18.0.0/15 (the benchmarking range; this machine's own network is never a target).

The bridge has the first address of the subnet (a process in the root namespace, like Redis or a
test's viewer, reaches every host through it); host n has address n + 1. Needs root (CI runs as
root) and iproute2. Everything made here is removed by close().
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import end

SUBNET_BASE = "198.18"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def available() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"iproute2's ip cannot list namespaces: {exc}"
    return None


@dataclass
class Host:
    name: str          # the namespace's name
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, *argv: str) -> list[str]:
        """argv run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, output: Path) -> subprocess.Popen:
        with open(output, "ab") as out:
            proc = subprocess.Popen(self.argv(*argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc


def _free_subnet() -> int:
    """A third octet n such that no interface here has an address in 198.18.n.0/24."""
    shown = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10, check=True).stdout
    used = {int(m) for m in re.findall(rf"{SUBNET_BASE.replace('.', '[.]')}[.](\d+)[.]", shown)}
    return next(n for n in range(20, 255) if n not in used)


_made = itertools.count(1)


def _pids_in(namespace: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10)
    return [int(p) for p in listed.stdout.split()]


class Network:
    def __init__(self) -> None:
        subnet = self.subnet = _free_subnet()
        # Names unique in this process for good: a namespace a straggler still holds open keeps
        # its interfaces, which must not collide with the next network's.
        self.tag = f"af{os.getpid() % 10000}n{next(_made)}"
        self.bridge = f"{self.tag}br"
        self.gateway = f"{SUBNET_BASE}.{subnet}.1"
        self.hosts: list[Host] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self) -> Host:
        n = len(self.hosts) + 1
        host = Host(name=f"{self.tag}h{n}", address=f"{SUBNET_BASE}.{self.subnet}.{n + 1}")
        outside, inside = f"{self.tag}v{n}", f"{self.tag}p{n}"
        _ip("netns", "add", host.name)
        self.hosts.append(host)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.name)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        inns = ("netns", "exec", host.name, "ip")
        _ip(*inns, "addr", "add", f"{host.address}/24", "dev", inside)
        _ip(*inns, "link", "set", inside, "up")
        _ip(*inns, "link", "set", "lo", "up")
        _ip(*inns, "route", "add", "default", "via", self.gateway)
        return host

    def close(self, grace: float = 10.0) -> None:
        """Every process SIGTERMed at once, SIGKILLed after `grace`; whatever still runs in a
        namespace (what they left behind) SIGKILLed; then the namespaces go."""
        procs = [proc for host in self.hosts for proc in host.procs if proc.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            end(proc, max(0.1, deadline - time.monotonic()))
        survivors: dict[str, list[int]] = {}
        for host in self.hosts:
            deadline = time.monotonic() + 5
            while (left := _pids_in(host.name)) and time.monotonic() < deadline:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            if left:
                survivors[host.name] = left
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
        if survivors:
            raise RuntimeError(f"processes outlived SIGKILL in the hosts' namespaces: {survivors}")
