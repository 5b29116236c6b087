"""Lip-sync worker under 1, 4, 8 and 16 concurrent WebRTC viewers.

    .venv/bin/python bench/worker_bench.py [--viewers 1 4 8 16] [--trials 6]

A real worker process (puppet engine, in-process espeak) serves the bundled portrait to real
aiortc viewers in this process over loopback. With all viewers watching, /human is sent to
one viewer at a time; each trial speaks ~2.5 s, then interrupts. Measured per viewer count:
- speech: /human to the first speech packet arriving (network) and to the first loud decoded
  audio frame (heard; includes aiortc's receiver buffering 4 packets = 80 ms);
- interrupt: /interrupt_talk to the last speech packet arriving (network);
- fps and p99 interval between video frames, per viewer over the whole measurement (one viewer
  speaks at a time, the others are idle and share the idle stream);
- CPU of the worker process per session (% of one core).
By default the viewers time video frames as their RTP packets arrive and decode only audio, so
16 co-located clients do not steal the worker's 2 cores; --decode-video decodes everything.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
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
from harness.ports import free_port, wait_healthy  # noqa: E402
from harness.processes import end  # noqa: E402
from harness.viewer import Viewer, loud_after, speech_at_network, video_timing  # noqa: E402

TEXT = "Hello, I am your avatar. Ask me anything you like and I will answer."


def last_speech_packet(levels, since):
    loud = [t for t, level in levels if t >= since and level < 60]
    return loud[-1] if loud else since


async def measure(url: str, pid: int, viewers_count: int, trials: int, decode_video: bool) -> dict:
    async with aiohttp.ClientSession() as http:
        viewers = [await Viewer(url, decode_video=decode_video).connect(http) for _ in range(viewers_count)]
        await asyncio.sleep(2.0)
        process = psutil.Process(pid)
        cpu0, t0 = process.cpu_times(), time.monotonic()
        speech, heard, silence = [], [], []
        for trial in range(trials):
            viewer = viewers[trial % len(viewers)]
            asked = time.monotonic()
            await viewer.post(http, "/human", text=TEXT, type="echo")
            await asyncio.sleep(2.5)
            interrupted = time.monotonic()
            await viewer.post(http, "/interrupt_talk")
            await asyncio.sleep(0.5)
            got = viewer.received
            speech.append(speech_at_network(got.rtp_levels, asked) - asked)
            heard.append(loud_after(got.audio, asked, 300) - asked)
            silence.append(last_speech_packet(got.rtp_levels, interrupted) - interrupted)
        cpu1, t1 = process.cpu_times(), time.monotonic()
        for viewer in viewers:
            await viewer.close()
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100
    return {
        **video_timing([viewer.received for viewer in viewers], t0, t1),
        "speech_ms": 1000 * statistics.median(speech), "speech_max_ms": 1000 * max(speech),
        "heard_ms": 1000 * statistics.median(heard),
        "silence_ms": 1000 * statistics.median(silence), "cpu": cpu, "cpu_per_session": cpu / viewers_count,
    }


async def bench(counts: list[int], trials: int, decode_video: bool) -> list[tuple[int, dict]]:
    data = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    env = {**os.environ, "AVATAR_DATA_DIR": str(data)}
    prepare_portrait(data, "bench")
    rows = []
    for count in counts:
        port = free_port()
        worker = subprocess.Popen([sys.executable, "-m", "lipsync_worker", "--avatar_id", "bench",
                                   "--listenport", str(port), "--max_session", str(max(counts))],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(url)
            rows.append((count, await measure(url, worker.pid, count, trials, decode_video)))
        finally:
            end(worker)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--decode-video", action="store_true",
                        help="decode the viewers' video too (their CPU then competes with the worker's)")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.viewers, args.trials, args.decode_video))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"512x512 VP8, puppet engine, {args.trials} speech trials per row, "
          f"viewers {'decode' if args.decode_video else 'time RTP frames without decoding'} video")
    print("| viewers | fps mean (min) | p99 frame interval ms | speech at network p50 (max) ms | heard p50 ms "
          "| interrupt to silence ms | worker CPU % | per session % |")
    print("|---|---|---|---|---|---|---|---|")
    for count, r in rows:
        print(f"| {count} | {r['fps']:.1f} ({r['fps_min']:.1f}) | {r['p99_ms']:.0f} | {r['speech_ms']:.0f} "
              f"({r['speech_max_ms']:.0f}) | {r['heard_ms']:.0f} | {r['silence_ms']:.0f} | {r['cpu']:.0f} "
              f"| {r['cpu_per_session']:.1f} |")


if __name__ == "__main__":
    main()
