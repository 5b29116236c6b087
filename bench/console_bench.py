"""Web console: time to the first frame on screen, and what the manager's signalling relay costs.

    .venv/bin/python bench/console_bench.py [--runs 10] [--calls 50]

A real manager (`python -m avatar_manager`, SQLite store, defaults) with the real lipsync_worker
serving the bundled portrait as `demo`.
1. Headless Chromium (harness/browser.py) opens /?avatar=demo&autostart=1 --runs times. A script
   put in place before the page's own (CDP Page.addScriptToEvaluateOnNewDocument) notes
   performance.now() at the first frame the <video> presents (requestVideoFrameCallback):
   navigation start to the picture, everything included (page, scripts, /avatar/start, the
   worker's start, the relayed /offer, ICE, DTLS, the first decoded frame). Cold: the avatar is
   stopped before each run. Warm: it is RUNNING, as when a second person opens it.
2. An aiortc viewer (harness/viewer.py) connects --runs times through the relay
   (/avatar/demo/offer) and as many straight to the worker's port: offer to connected. Then
   --calls POST /is_speaking each way on one keep-alive session: one relayed request.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.manager_bench import call, machine, start  # noqa: E402
from harness.avatars import prepare_portrait  # noqa: E402
from harness.browser import chromium  # noqa: E402
from harness.manager import Manager  # noqa: E402
from harness.viewer import Viewer  # noqa: E402

FIRST_FRAME = """
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("video").requestVideoFrameCallback(() => { window.firstFrame = performance.now(); });
});
"""


def first_frame_ms(browser, url: str, timeout: float = 60.0) -> float:
    browser.get(url)
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script("return window.firstFrame")
        if value is not None:
            return float(value)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no frame within {timeout:g} s")
        time.sleep(0.01)


def console_runs(manager: Manager, runs: int) -> dict[str, list[float]]:
    url = f"http://127.0.0.1:{manager.port}/?avatar=demo&autostart=1"
    times = {"cold": [], "warm": []}
    with chromium() as browser:
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FIRST_FRAME})
        first_frame_ms(browser, url)  # the browser's own first start (profile, codecs) left out
        browser.get("about:blank")
        for kind in ("cold", "warm"):
            for _ in range(runs):
                if kind == "cold":
                    status, body = call(manager.port, "POST", "/avatar/stop-all")
                    if status != 200:  # the run would be a warm one, measured as cold
                        raise RuntimeError(f"POST /avatar/stop-all: {status} {body}")
                else:
                    start(manager, "demo")  # someone else keeps it running
                times[kind].append(first_frame_ms(browser, url))
                browser.get("about:blank")  # the page leaves: it disconnects
                time.sleep(0.3)
    return times


async def relay_runs(manager: Manager, runs: int, calls: int) -> dict[str, dict[str, list[float]]]:
    instance = start(manager, "demo")
    bases = {"relayed": f"http://127.0.0.1:{manager.port}/avatar/demo",
             "direct": instance["webrtc_url"].removesuffix("/offer")}
    results = {}
    async with aiohttp.ClientSession() as http:
        for name, base in bases.items():
            connects, requests = [], []
            for _ in range(runs):
                started = time.perf_counter()
                viewer = await Viewer(base, decode_video=False).connect(http)
                connects.append((time.perf_counter() - started) * 1000)
                for _ in range(calls if not requests else 0):
                    started = time.perf_counter()
                    status, _ = await viewer.post(http, "/is_speaking")
                    requests.append((time.perf_counter() - started) * 1000)
                    assert status == 200
                await viewer.close()
            results[name] = {"connect": connects, "request": requests}
    return results


def cells(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.0f} | {ordered[-1]:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        manager = Manager(Path(tmp), {"IDLE_TIMEOUT": "300"}, test_settings=False)
        prepare_portrait(manager.data_dir)
        with manager:
            times = console_runs(manager, args.runs)
            relay = asyncio.run(relay_runs(manager, args.runs, args.calls))
    print(f"\nConsole: /?avatar=demo&autostart=1, navigation start to the first frame on screen, {args.runs} runs\n")
    print("| avatar | p50 ms | max ms |\n|---|---|---|")
    print(f"| cold (stopped: the worker starts) | {cells(times['cold'])} |")
    print(f"| warm (already RUNNING) | {cells(times['warm'])} |")
    print(f"\naiortc viewer, {args.runs} connections and {args.calls} POST /is_speaking each way\n")
    print("| path | offer to connected p50 ms | max ms | one request p50 ms | max ms |\n|---|---|---|---|---|")
    for name, result in relay.items():
        print(f"| {name} | {cells(result['connect'])} | {cells(result['request'])} |")
    print(f"\nconsole: warm first frame {statistics.median(times['warm']):.0f} ms p50, "
          f"cold {statistics.median(times['cold']):.0f} ms p50")


if __name__ == "__main__":
    main()
