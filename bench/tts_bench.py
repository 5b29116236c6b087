"""Time to first audio byte and real-time factor of each TTS model, over HTTP.

    .venv/bin/python bench/tts_bench.py [--runs N]

Each model runs as its own `python -m tts_services` process, as in production. The bridges
(sovits, cosyvoice, tacotron) talk to tests/upstreams.py, a local server that answers at once
in the upstream's wire format: their rows measure our bridge's overhead (request, resampling,
streaming), not the upstream model. edgetts needs the internet; offline it reports how fast it
fails. RTF = wall time to the last byte / seconds of audio (below 1 is faster than real time).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.processes import Services  # noqa: E402
from harness.stats import percentile  # noqa: E402
from tts_services.client import LocalTTS  # noqa: E402

TEXTS = {
    "en sentence": "The quick brown fox jumps over the lazy dog.",
    "en paragraph": ("Good morning and welcome. Today we will look at three things. First, the weather, "
                     "which is sunny with 25 degrees. Second, the traffic on the main roads. "
                     "Finally, a short story to end the day."),
    "fa paragraph": ("صبح بخیر و خوش آمدید. امروز به سه موضوع می‌پردازیم. اول هوا، که آفتابی و ۲۵ درجه است. "
                     "دوم، ترافیک جاده‌های اصلی. در پایان یک داستان کوتاه."),
}


class Failed(Exception):
    pass


def over_http(http: aiohttp.ClientSession, url: str):
    async def speak(text: str):
        async with http.post(url + "/tts", json={"text": text}) as response:
            if response.status != 200:
                raise Failed(f"{response.status}")
            async for data in response.content.iter_any():
                yield data
    return speak


def in_process(local):
    async def speak(text: str):
        async for chunk in local.stream(text):
            yield chunk.pcm
    return speak


async def measure(speak, text: str, runs: int) -> dict:
    """Time to the first audio bytes and to the last, over `runs` syntheses of `text`."""
    firsts, totals, audio = [], [], 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        first, size = None, 0
        try:
            async for data in speak(text):
                first = first or time.perf_counter() - t0
                size += len(data)
        except Failed as exc:
            return {"failure": f"{exc} in {1000 * (time.perf_counter() - t0):.0f} ms"}
        firsts.append(1000 * first)
        totals.append(time.perf_counter() - t0)
        audio = size / 32000
    return {"first_p50": statistics.median(firsts), "first_p95": percentile(firsts, 0.95),
            "rtf": statistics.median(totals) / audio, "audio": audio, "failure": None}


async def bench(runs: int) -> list[tuple]:
    prompt = ROOT / "bench" / ".prompt.wav"
    prompt.write_bytes(b"RIFF" + bytes(1000))
    upstreams = {"sovits": "sovits", "cosyvoice": "cosyvoice", "tacotron": "coqui"}
    procs, rows = Services(ROOT), []
    try:
        for model in ("espeak", "edgetts", "sovits", "cosyvoice", "tacotron"):
            env = {}
            if model in upstreams:
                up = await procs.start([sys.executable, str(ROOT / "tests" / "upstreams.py"), upstreams[model],
                                        "--port", "{port}"], ready="/last")
                env.update(SOVITS_URL=up, SOVITS_REF_AUDIO="/ref.wav", COSYVOICE_URL=up,
                           COSYVOICE_REF_AUDIO=str(prompt), TACOTRON_URL=up)
            url = await procs.start([sys.executable, "-m", "tts_services", "--model", model, "--port", "{port}"],
                                    env)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                for name, text in TEXTS.items():
                    if model in upstreams and name.startswith("fa"):
                        continue  # those upstreams have no Persian voice
                    rows.append((model, name, runs, await measure(over_http(http, url), text, runs)))
        # The in-process offline voice the worker falls back to when its TTS server is down.
        local = LocalTTS()
        for name, text in TEXTS.items():
            rows.append(("espeak in-process", name, runs, await measure(in_process(local), text, runs)))
    finally:
        procs.stop()
        prompt.unlink(missing_ok=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows = asyncio.run(bench(args.runs))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print("| model | text | runs | first audio p50 ms | p95 ms | RTF | audio s |")
    print("|---|---|---|---|---|---|---|")
    for model, text, runs, r in rows:
        if r["failure"]:
            print(f"| {model} | {text} | {runs} | fails: {r['failure']} | | | |")
        else:
            print(f"| {model} | {text} | {runs} | {r['first_p50']:.1f} | {r['first_p95']:.1f} | "
                  f"{r['rtf']:.3f} | {r['audio']:.2f} |")


if __name__ == "__main__":
    main()
