"""Talking to the avatar by voice: the end of the viewer's speech to the avatar's first audio,
barge-in, and each recognition model's real-time factor.

    .venv/bin/python bench/conversation_bench.py [--turns N]

A puppet worker, a real sphinx recognition server (python -m asr_services), a local fake LLM that
answers at once (tests/upstreams.py openai) and espeak, each its own process as in production; an
aiortc viewer in this process speaks espeak's speech as its microphone. Timed at the viewer:
- answer: from the moment the question's last voiced sample was sent to the arrival of the first
  RTP audio packet of the answer with a speech level (before the viewer's jitter buffer). It
  includes VAD_SILENCE_MS (400 ms), the silence that tells the end of a turn.
- barge-in: while the avatar tells a long story, the viewer says "hello world"; from its first
  voiced sample sent to the last RTP packet with speech of the story arriving.
The worker's own account of each stage (worker_turn_stage_seconds) is shown beside.
- RTF: recognition seconds / audio seconds of a 2.6 s question over POST /transcribe, per model:
  sphinx with its bundled English model; whisper with a tiny random model (harness/whisper.py;
  the real weights are not fetchable here, so this row is the pipeline's cost, not a real
  model's); openai against a local fake endpoint (our overhead only).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.avatars import prepare_portrait  # noqa: E402
from harness.processes import Services  # noqa: E402
from harness.speech import espeak_pcm  # noqa: E402
from harness.stats import percentile  # noqa: E402
from harness.viewer import MIC_RATE, Microphone, Viewer, speech_at_network  # noqa: E402

QUESTION = "What is the weather like today?"
STORY = "Let me tell you a long story about the sea and the ships that sail on it, day and night. " * 4
SPEECH_LEVEL = 60   # RTP audio level (-dBov) below which a packet carries speech


def voiced_seconds(pcm: bytes) -> tuple[float, float]:
    """Where speech begins and ends in `pcm` (espeak leaves a little silence around it)."""
    samples = np.abs(np.frombuffer(pcm, "<i2").astype(np.int32))
    loud = np.flatnonzero(samples > 500)
    return loud[0] / MIC_RATE, (loud[-1] + 1) / MIC_RATE


async def until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not do what the bench waited for")
        await asyncio.sleep(0.02)


async def turns(http: aiohttp.ClientSession, worker: str, count: int) -> list[float]:
    """Seconds from the end of each question to the first audio of its answer."""
    question = await espeak_pcm(QUESTION)
    _, voiced_end = voiced_seconds(question)
    mic = Microphone()
    viewer = await Viewer(worker, microphone=mic, events=True, mode="chat").connect(http)
    latencies = []
    try:
        await asyncio.sleep(1.0)
        for i in range(count):
            mic.say(question)
            await until(lambda: len(viewer.received.named("speaking_ended")) > i)
            spoke_until = mic.said[i][0] + voiced_end
            answered = speech_at_network(viewer.received.rtp_levels, spoke_until)
            latencies.append(answered - spoke_until)
            await asyncio.sleep(0.5)
    finally:
        await viewer.close()
    return latencies


async def barge_ins(http: aiohttp.ClientSession, worker: str, count: int) -> tuple[list[float], list[float]]:
    """Seconds from the start of the viewer's speech to the avatar's last packet of speech, and
    to the worker's VAD firing (its speech_started event, stamped with the same clock)."""
    wall = time.time() - time.monotonic()
    words = await espeak_pcm("hello world")
    voiced_start, _ = voiced_seconds(words)
    mic = Microphone()
    viewer = await Viewer(worker, microphone=mic, events=True, mode="echo").connect(http)
    latencies, heard = [], []
    try:
        await asyncio.sleep(1.0)
        for i in range(count):
            await viewer.post(http, "/human", text=STORY, type="echo", interrupt=True)
            await until(lambda: len(viewer.received.named("speaking_started")) > 2 * i)
            await asyncio.sleep(1.0)
            mic.say(words)
            await until(lambda: len(viewer.received.named("speech_started")) > i)
            await asyncio.sleep(1.0)
            began = mic.said[i][0] + voiced_start
            levels = [(t, level) for t, level in viewer.received.rtp_levels if began <= t < began + 1.0]
            last_speech = max((t for t, level in levels if level < SPEECH_LEVEL), default=began)
            latencies.append(last_speech - began)
            heard.append(viewer.received.named("speech_started")[i]["time"] - wall - began)
            # "hello world" is said back; let it end before the next story.
            await until(lambda: len(viewer.received.named("speaking_ended")) >= 2 * (i + 1))
    finally:
        await viewer.close()
    return latencies, heard


async def real_time_factor(http: aiohttp.ClientSession, url: str, pcm: bytes, runs: int = 5) -> float:
    took = []
    for _ in range(runs):
        t0 = time.perf_counter()
        async with http.post(url + "/transcribe", params={"language": "en"}, data=pcm,
                             headers={"Content-Type": "application/octet-stream"}) as response:
            response.raise_for_status()
            await response.read()
        took.append(time.perf_counter() - t0)
    return statistics.median(took) / (len(pcm) / 2 / MIC_RATE)


def stages(metrics: str) -> dict[str, float]:
    """The worker's mean seconds per turn stage, from its /metrics."""
    sums = dict(re.findall(r'worker_turn_stage_seconds_sum\{stage="(\w+)"\} (\S+)', metrics))
    counts = dict(re.findall(r'worker_turn_stage_seconds_count\{stage="(\w+)"\} (\S+)', metrics))
    return {stage: float(sums[stage]) / float(counts[stage]) for stage in sums if float(counts[stage])}


async def bench(count: int) -> None:
    from harness.whisper import save_random   # transformers and ctranslate2: only here

    procs = Services(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        data, models = Path(tmp) / "data", Path(tmp) / "models"
        prepare_portrait(data, "astro")
        try:
            sphinx = await procs.start([sys.executable, "-m", "asr_services", "--model", "sphinx", "--port", "{port}"])
            llm = await procs.start([sys.executable, "tests/upstreams.py", "openai", "--port", "{port}"],
                                    ready="/last")
            worker = await procs.start(
                [sys.executable, "-m", "lipsync_worker", "--model", "puppet", "--avatar_id", "astro",
                 "--listenport", "{port}", f"--ASR_SERVER={sphinx}"],
                env={"AVATAR_DATA_DIR": str(data), "LLM_URL": llm + "/v1"})
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                answers = await turns(http, worker, count)
                async with http.get(worker + "/metrics") as response:
                    worker_stages = stages(await response.text())
                barges, heard = await barge_ins(http, worker, count)
                save_random(models / "whisper" / "tiny-random")
                whisper = await procs.start([sys.executable, "-m", "asr_services", "--model", "whisper",
                                             "--port", "{port}"],
                                            env={"MODELS_DIR": str(models), "WHISPER_MODEL": "tiny-random"})
                openai = await procs.start([sys.executable, "-m", "asr_services", "--model", "openai",
                                            "--port", "{port}"], env={"ASR_URL": llm + "/v1"})
                question = await espeak_pcm(QUESTION)
                rtf = {name: await real_time_factor(http, url, question)
                       for name, url in (("sphinx", sphinx), ("whisper (tiny random)", whisper),
                                         ("openai (local fake)", openai))}
        finally:
            procs.stop()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {count} turns, {count} barge-ins")
    print("| measure | p50 ms | p95 ms | target |")
    print("|---|---|---|---|")
    print(f"| end of speech -> first answer audio at the viewer (sphinx, fake LLM, espeak) | "
          f"{1000 * statistics.median(answers):.0f} | {1000 * percentile(answers, 0.95):.0f} | <= 800 |")
    print(f"| start of speech -> the avatar's last speech packet (barge-in) | "
          f"{1000 * statistics.median(barges):.0f} | {1000 * percentile(barges, 0.95):.0f} | <= 100 |")
    print(f"| of which: start of speech -> the worker's VAD fires | "
          f"{1000 * statistics.median(heard):.0f} | {1000 * percentile(heard, 0.95):.0f} | |")
    print()
    print("| the worker's stage (mean, from the end of speech) | ms |")
    print("|---|---|")
    for stage, seconds in worker_stages.items():
        print(f"| {stage} | {1000 * seconds:.0f} |")
    print()
    print("| recognition model | RTF (/transcribe, 2.6 s question) |")
    print("|---|---|")
    for name, value in rtf.items():
        print(f"| {name} | {value:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10)
    asyncio.run(bench(parser.parse_args().turns))


if __name__ == "__main__":
    main()
