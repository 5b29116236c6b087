"""A fleet of several hosts on one machine, for tests and benchmarks: Redis on the bridge of a
network of namespaces (harness/netns.py), a host agent per host and the stateless API on a host
of its own. Every host shares one AVATAR_DATA_DIR (the shared-filesystem set-up)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from harness import netns
from harness.processes import end, wait_for
from harness.redis import start_redis

ROOT = Path(__file__).resolve().parent.parent
FAKE = "tests.fake_worker"
API_PORT = 8607
BASE_PORT = 8615
REDIS_PORT = 6390


class Fleet:
    """Redis on the bridge, an agent per host, the API on a host of its own."""

    def __init__(self, tmp: Path, hosts: int, nvml: dict | None = None, **env: str) -> None:
        why = netns.available()
        if why:
            raise RuntimeError(f"a fleet of several hosts on one machine needs network namespaces: {why}")
        self.tmp = tmp
        self.agents: dict[str, subprocess.Popen] = {}
        self.redis: subprocess.Popen | None = None
        self.net = netns.Network()
        try:
            self._start(hosts, nvml, env)
        except BaseException:
            self.close()
            raise

    def _start(self, hosts: int, nvml: dict | None, env: dict[str, str]) -> None:
        tmp = self.tmp
        self.data_dir = tmp / "data"  # one folder for every host: the shared-filesystem set-up
        self.data_dir.mkdir()
        self.redis = self._redis()
        self.env = {**os.environ, "REDIS_URL": self.redis_url, "AVATAR_DATA_DIR": str(self.data_dir),
                    "AVATAR_BASE_PORT": str(BASE_PORT), "MAX_AVATARS": "4", "WORKER_MODULE": FAKE,
                    "STARTUP_TIMEOUT": "20", "STOP_TIMEOUT": "3", "PYTHONUNBUFFERED": "1", **env}
        self.nvml = nvml  # each host's own fake NVML world, if any
        self.hosts = [self.net.add_host() for _ in range(hosts)]
        for n, host in enumerate(self.hosts, 1):
            self.start_agent(f"host{n}", host)
        self.api_host = self.net.add_host()
        self.api = self.api_host.spawn(
            [sys.executable, "-m", "avatar_manager", "serve", "--role", "api"],
            {**self.env, "HOST_ID": "api", "AVATAR_MANAGER_HOST": self.api_host.address,
             "AVATAR_MANAGER_PORT": str(API_PORT), "LOG_DIR": str(tmp / "logs-api")}, ROOT, tmp / "api.out")
        self.url = f"http://{self.api_host.address}:{API_PORT}"
        wait_for(self._ready, timeout=30, what="the API ready with every host live")

    def _redis(self) -> subprocess.Popen:
        self.redis_url = f"redis://{self.net.gateway}:{REDIS_PORT}/0"
        return start_redis(self.tmp / "redis", REDIS_PORT, self.net.gateway, "--protected-mode", "no")

    def start_agent(self, host_id: str, host: netns.Host) -> subprocess.Popen:
        env = {**self.env, "HOST_ID": host_id, "HOST_ADDRESS": host.address, "LOG_DIR": str(self.tmp / f"logs-{host_id}")}
        if self.nvml is not None:
            world = self.tmp / f"nvml-{host_id}.json"
            world.write_text(json.dumps(self.nvml))
            env.update(FAKE_NVML=str(world), PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "fake_nvml"), str(ROOT)]))
        agent = host.spawn([sys.executable, "-m", "avatar_manager", "serve", "--role", "agent"], env, ROOT,
                           self.tmp / f"agent-{host_id}.out")
        self.agents[host_id] = agent
        return agent

    def _ready(self) -> bool:
        try:
            status = requests.get(self.url + "/status", timeout=2)
        except requests.RequestException:
            return False
        return status.status_code == 200 and sum(h["state"] == "live" for h in status.json()["data"]["hosts"]) == len(
            self.agents)

    def host_of(self, host_id: str) -> netns.Host:
        return self.hosts[int(host_id.removeprefix("host")) - 1]

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=60)

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=90)

    def instances(self) -> dict[str, dict]:
        return {i["real_avatar_name"]: i for i in self.get("/avatar/list?all=1").json()["data"]}

    def serving(self, avatar: str) -> list[str]:
        """The hosts where a worker of `avatar` answers /health right now (asked on every host)."""
        found = []
        for n, host in enumerate(self.hosts, 1):
            for port in range(BASE_PORT, BASE_PORT + int(self.env["MAX_AVATARS"])):
                try:
                    health = requests.get(f"http://{host.address}:{port}/health", timeout=0.3).json()
                except (requests.RequestException, ValueError):
                    continue
                if health.get("avatar") == avatar:
                    found.append(f"host{n}")
        return found

    def close(self) -> None:
        """Every instance stopped through the API (as far as it still answers), then every process
        ended, the namespaces and the bridge removed."""
        if hasattr(self, "url"):
            try:
                self.post("/avatar/stop-all", {})
            except requests.RequestException:
                pass
        for agent in self.agents.values():
            if agent.poll() is None:
                os.kill(agent.pid, signal.SIGCONT)  # a stopped one cannot act on SIGTERM
        self.net.close()
        if self.redis is not None:
            end(self.redis)
