"""Avatar registration: an image and a 10-second video, through the API, end to end.

    .venv/bin/python bench/registration_bench.py [--image-runs 5] [--video-runs 2] [--video-seconds 10]

A real manager (its own temporary data and log folders, free ports, defaults otherwise). Each
run POSTs the file to /avatar/register (multipart) and times the round trip until its answer:
the upload is stored, the supervisor runs `python -m avatar_manager register` for it (content
sniffing, face detection on every frame, quality checks, frames written, the atomic rename), and
the handler answers with the record. `processing_seconds` is the preparation alone. Each avatar
is deleted between runs. The video is the bundled portrait (scaled to 700 px), moving, 1280x720 at 30 fps (mp4v).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.manager_bench import Manager, machine, with_managers  # noqa: E402


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


def run(args, tmp: Path, managers: list[Manager]) -> None:
    manager = Manager(tmp, {"REGISTER_WAIT": "600", "WORKER_MODULE": "tests.fake_worker"})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-runs", type=int, default=5)
    parser.add_argument("--video-runs", type=int, default=2)
    parser.add_argument("--video-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with_managers(run, args, "registration-bench-")


if __name__ == "__main__":
    main()
