"""Avatar registration: an image and a 10-second video, through the API, end to end; then upload
bombs (harness/bombs.py), each refused, with the peak RSS of the registration child that refused it.

    .venv/bin/python bench/registration_bench.py [--image-runs 5] [--video-runs 2] [--video-seconds 10]

A real manager (its own temporary data and log folders, free ports, defaults otherwise). Each
run POSTs the file to /avatar/register (multipart) and times the round trip until its answer:
the upload is stored, the supervisor runs `python -m lipsync_worker prepare --json` for it (content
sniffing, face detection on every frame, quality checks, frames written, the atomic rename), and
the handler answers with the record. `processing_seconds` is the preparation alone. Each avatar
is deleted between runs. The video is the bundled portrait (scaled to 700 px), moving, 1280x720 at 30 fps (mp4v).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.manager_bench import machine  # noqa: E402
from harness import bombs  # noqa: E402
from harness.manager import Manager, with_managers  # noqa: E402


def make_video(path: Path, seconds: float) -> Path:
    face = cv2.resize(cv2.imread(str(ROOT / "assets" / "astronaut.png")), (700, 700))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (1280, 720))
    for i in range(int(seconds * 30)):
        frame = np.full((720, 1280, 3), 90, np.uint8)
        x = 290 + int(8 * np.sin(i / 10))
        frame[10:710, x:x + 700] = face
        writer.write(frame)
    writer.release()
    return path


def register(manager: Manager, path: Path, name: str) -> tuple[float, float]:
    started = time.perf_counter()
    with open(path, "rb") as f:
        answer = requests.post(f"http://127.0.0.1:{manager.port}/avatar/register", timeout=600,
                               data={"avatar_name": name}, files={"file": (path.name, f)})
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"register {path.name}: {answer.status_code} {answer.text}")
    requests.delete(f"http://127.0.0.1:{manager.port}/avatar/{name}", timeout=60).raise_for_status()
    return elapsed, answer.json()["data"]["processing_seconds"]


def peak_rss(pid: int) -> int:
    """VmHWM of the process (its peak resident set so far), in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def refuse(manager: Manager, path: Path) -> tuple[float, int, str, int]:
    """POST a bomb; (seconds, status, message, peak RSS of the registration child). The child's
    high-water mark is read every 5 ms while the request runs."""
    peak, stop = {}, threading.Event()

    def watch() -> None:
        root = psutil.Process(manager.proc.pid)
        while not stop.is_set():
            for child in root.children(recursive=True):
                try:
                    if "prepare" in child.cmdline():
                        peak[child.pid] = max(peak.get(child.pid, 0), peak_rss(child.pid))
                except psutil.Error:
                    pass
            time.sleep(0.005)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    with open(path, "rb") as f:
        answer = requests.post(f"http://127.0.0.1:{manager.port}/avatar/register", timeout=600,
                               data={"avatar_name": f"b{uuid.uuid4().hex[:8]}"}, files={"file": (path.name, f)})
    elapsed = time.perf_counter() - started
    stop.set()
    watcher.join(timeout=5)
    return elapsed, answer.status_code, answer.json()["message"], max(peak.values(), default=0)


def run_bombs(tmp: Path, manager: Manager) -> None:
    cases = [("PNG 13000x13000 RGBA, one colour", bombs.png_bomb(tmp / "big.png")),
             ("MOV 16000x16000, one frame", bombs.mov_bomb(tmp / "big.mov")),
             ("MP4 512x512, 4 frames an hour apart", bombs.slow_video(tmp / "slow.mp4")),
             ("MOV 513x512 (odd width), 4 frames an hour apart", bombs.slow_video(tmp / "slow.mov", width=513)),
             ("portrait PNG 512x512 (not a bomb: for comparison)", ROOT / "assets" / "astronaut.png")]
    print("\n| upload | bytes | answer | refused in s | peak RSS of the registration child MB |")
    print("|---|---|---|---|---|")
    for label, path in cases:
        seconds, status, message, rss = refuse(manager, path)
        print(f"| {label} | {path.stat().st_size} | {status}: {message[:90]} | {seconds:.2f} | {rss / 2**20:.0f} |")


def run(args, tmp: Path, managers: list[Manager]) -> None:
    manager = Manager(tmp, {"REGISTER_WAIT": "600", "WORKER_MODULE": "tests.fake_worker"}, test_settings=False)
    managers.append(manager)
    manager.start()
    video = make_video(tmp / "clip.mp4", args.video_seconds)
    rows = []
    for label, path, runs in (("image, 512x512 PNG", ROOT / "assets" / "astronaut.png", args.image_runs),
                              (f"video, {args.video_seconds:g} s 1280x720 30 fps MP4", video, args.video_runs)):
        times = [register(manager, path, f"b{uuid.uuid4().hex[:8]}") for _ in range(runs)]
        rows.append((label, path.stat().st_size, runs, times))
        print(f"{label}: {[round(t, 2) for t, _ in times]}", file=sys.stderr)
    print(f"machine: {machine()}\n")
    print("| upload | bytes | runs | round trip p50 s (max) | preparation p50 s |")
    print("|---|---|---|---|---|")
    for label, size, runs, times in rows:
        total = [t for t, _ in times]
        prep = [p for _, p in times]
        print(f"| {label} | {size} | {runs} | {statistics.median(total):.2f} ({max(total):.2f}) "
              f"| {statistics.median(prep):.2f} |")
    run_bombs(tmp, manager)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-runs", type=int, default=5)
    parser.add_argument("--video-runs", type=int, default=2)
    parser.add_argument("--video-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with_managers(run, args, "registration-bench-")


if __name__ == "__main__":
    main()
