"""A redis-server of a test's (or a bench's) own."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from harness.processes import end

START_TIMEOUT = 10.0


def start_redis(folder: Path, port: int, bind: str = "127.0.0.1", *extra: str) -> subprocess.Popen:
    """redis-server on bind:port, its data (none saved) and its log (redis.log) in `folder`,
    answering PING; RuntimeError, with its log, when it exits or does not answer in time."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "redis.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", bind, "--daemonize", "no", "--save", "",
                                 "--appendonly", "no", "--dir", str(folder), *extra],
                                stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis(host=bind, port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server on {bind}:{port} exited with {proc.returncode}: {log.read_text()}")
            try:
                client.ping()
                return proc
            except redis.RedisError:
                if time.monotonic() > deadline:
                    end(proc)
                    raise RuntimeError(f"redis-server on {bind}:{port} did not answer PING within "
                                       f"{START_TIMEOUT:g} s: {log.read_text()}") from None
                time.sleep(0.05)
    finally:
        client.close()
