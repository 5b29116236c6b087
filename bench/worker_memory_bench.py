"""Peak memory of one lip-sync worker under a /human flood and a huge /humanaudio upload.

    .venv/bin/python bench/worker_memory_bench.py [--requests 200] [--audio-hours 2]

A real worker process (puppet engine, in-process espeak) with one real aiortc viewer on
loopback. Its RSS (psutil) is sampled every 50 ms:
- flood: `--requests` /human of 2000 characters each, one after another, then 15 s more while
  whatever was accepted is synthesised and played; counted: accepted (200) and refused (429);
- upload: one FLAC of `--audio-hours` of silence (it compresses to ~650 kB an hour, so it passes
  the 20 MB upload limit easily) to /humanaudio, then 5 s more;
- stop: SIGTERM right after the flood, to the process's exit.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.avatars import prepare_portrait  # noqa: E402
from harness.bombs import silent_flac  # noqa: E402
from harness.ports import free_port, wait_healthy  # noqa: E402
from harness.processes import end  # noqa: E402
from harness.viewer import Viewer  # noqa: E402

SENTENCE = "Hello there, my name is Astro, and I am talking to you over WebRTC while my lips follow my words. "
TEXT = (SENTENCE * 30)[:2000]
MB = 1024 * 1024


class RssSampler:
    """The process's resident memory every 50 ms, in a task, until stopped."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.samples: list[int] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.samples.append(self._process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return max(self.samples)


async def flood(url: str, pid: int, requests: int) -> dict:
    async with aiohttp.ClientSession() as http:
        viewer = await Viewer(url, decode_video=False).connect(http)
        await asyncio.sleep(1.0)
        base = psutil.Process(pid).memory_info().rss
        sampler = RssSampler(pid)
        statuses: dict[int, int] = {}
        for _ in range(requests):
            status, _ = await viewer.post(http, "/human", text=TEXT, type="echo")
            statuses[status] = statuses.get(status, 0) + 1
        await asyncio.sleep(15)
        peak = await sampler.stop()
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        stopped = await asyncio.to_thread(psutil.Process(pid).wait, 60)
        stop_seconds = time.monotonic() - sent
        await viewer.close()
    return {"base": base, "peak": peak, "statuses": statuses, "stop_seconds": stop_seconds, "exit": stopped}


async def upload(url: str, pid: int, hours: float) -> dict:
    data = silent_flac(int(hours * 3600))
    async with aiohttp.ClientSession() as http:
        viewer = await Viewer(url, decode_video=False).connect(http)
        await asyncio.sleep(1.0)
        base = psutil.Process(pid).memory_info().rss
        sampler = RssSampler(pid)
        form = aiohttp.FormData()
        form.add_field("sessionid", str(viewer.sessionid))
        form.add_field("file", data, filename="silence.flac", content_type="audio/flac")
        asked = time.monotonic()
        async with http.post(url + "/humanaudio", data=form, timeout=aiohttp.ClientTimeout(total=600)) as response:
            status, answer = response.status, await response.json()
        answer_seconds = time.monotonic() - asked
        await asyncio.sleep(5)
        peak = await sampler.stop()
        await viewer.close()
    return {"base": base, "peak": peak, "status": status, "msg": answer.get("msg", ""),
            "answer_seconds": answer_seconds, "file_bytes": len(data)}


async def with_worker(env: dict, scenario, *args) -> dict:
    port = free_port()
    worker = subprocess.Popen([sys.executable, "-m", "lipsync_worker", "--avatar_id", "bench",
                               "--listenport", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url)
        return await scenario(url, worker.pid, *args)
    finally:
        end(worker, grace=15)


async def bench(requests: int, hours: float) -> tuple[dict, dict]:
    data = Path(tempfile.mkdtemp(prefix="worker-memory-bench-"))
    env = {**os.environ, "AVATAR_DATA_DIR": str(data)}
    prepare_portrait(data, "bench")
    return await with_worker(env, flood, requests), await with_worker(env, upload, hours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--audio-hours", type=float, default=2.0)
    args = parser.parse_args()
    flooded, uploaded = asyncio.run(bench(args.requests, args.audio_hours))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          "puppet engine, in-process espeak, one aiortc viewer")
    print("| scenario | answers | RSS before MB | peak RSS MB | growth MB | notes |")
    print("|---|---|---|---|---|---|")
    answers = ", ".join(f"{count}x {status}" for status, count in sorted(flooded["statuses"].items()))
    print(f"| {args.requests} x /human of 2000 chars | {answers} | {flooded['base'] / MB:.0f} "
          f"| {flooded['peak'] / MB:.0f} | {(flooded['peak'] - flooded['base']) / MB:.0f} "
          f"| SIGTERM to exit {flooded['stop_seconds']:.1f} s (exit code {flooded['exit']}) |")
    print(f"| /humanaudio: {args.audio_hours:g} h FLAC of silence ({uploaded['file_bytes'] / MB:.1f} MB) "
          f"| {uploaded['status']} | {uploaded['base'] / MB:.0f} | {uploaded['peak'] / MB:.0f} "
          f"| {(uploaded['peak'] - uploaded['base']) / MB:.0f} | answered in {uploaded['answer_seconds']:.1f} s"
          f"{': ' + uploaded['msg'] if uploaded['status'] != 200 else ''} |")


if __name__ == "__main__":
    main()
