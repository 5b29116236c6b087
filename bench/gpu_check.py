"""The GPU check: what a lent GPU machine can tell in one command (bench/gpu_check.sh runs this).

1. musetalk_bench: bench/musetalk_bench.py, one process with random full-size weights in fp16:
   frames per second at each batch size, and the GPU memory the process holds at each (NVML:
   its CUDA context included);
2. N processes or 1: N processes of one session each (musetalk_bench at batch 1) rendering at
   once, against the process of part 1 at batch N: frames per second and GPU memory each way,
   to know whether a model shared by the sessions of a GPU is worth building. Measured at the
   engine: the WebRTC around it costs the same per session either way;
3. worker + viewers: a real musetalk worker (python -m lipsync_worker) with aiortc viewers that
   all talk at once: frames per second at the viewers, the 99th percentile of the interval
   between their frames, and how many frames the worker renders per model call;
4. manager /status: a real manager's GET /status, reading the GPU through NVML.

One markdown table, printed and written to --out. Each part has a deadline, every process it
starts is reaped, and all traffic stays on this machine. Without a GPU it says so and exits 2.

  bench/gpu_check.sh --wheels .gpu_wheels/wheels.tar.xz   # a lent GPU machine (README, Development)
  bench/gpu_check.sh --dry-run                            # a CPU, in about a minute

--dry-run runs the same code on the CPU with tiny random models, N = 1 and 2, and a fake NVML
(tests/fake_nvml) for the manager, so that the check does not rot between GPUs
(tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import aiohttp
    import torch

    from avatar_manager.gpus import read_gpus
    from harness.avatars import prepare_portrait
    from harness.manager import Manager, checked, fake_nvml_env, samples
    from harness.musetalk import save_random
    from harness.ports import free_port
    from harness.processes import end
    from harness.viewer import Viewer, video_timing
except ModuleNotFoundError as missing:
    sys.exit(f"gpu_check: {missing.name} is not installed. On a lent GPU machine run bench/gpu_check.sh "
             f"--wheels .gpu_wheels/wheels.tar.xz (made by bench/gpu_wheels.sh); elsewhere use the project's "
             f"virtual environment (./start.sh install).")

BENCH = ROOT / "bench" / "musetalk_bench.py"
# Long enough to go on speaking through the measurement.
TEXT = ("Good morning, and thank you for coming. I am the avatar of this platform, and while we talk my "
        "face is drawn for you frame by frame, in time with my voice. Ask me anything you like: the "
        "weather, the news, or how this all works, and I will do my best to answer you.")
FAKE_GPU = {"name": "fake GPU", "total_mb": 143771, "free_mb": 140000, "utilization_percent": 0,
            "temperature_c": 30, "power_w": 75.5, "power_limit_w": 700}

Row = tuple[str, str, str, str, str]   # part, case, frames/s, GPU MiB, details


@dataclass(frozen=True)
class Plan:
    size: str                   # of the random MuseTalk weights: "full" or "tiny"
    dtype: str | None           # musetalk_bench's --dtype; None: its default for the device
    batches: tuple[int, ...]    # 1. musetalk_bench
    sessions: tuple[int, ...]   # 2. N
    viewers: int                # 3.
    seconds: float              # measuring time of each row


GPU_PLAN = Plan("full", "fp16", (1, 4, 8, 16, 32), (1, 4, 8), 4, 3.0)
DRY_RUN = Plan("tiny", None, (1, 2), (1, 2), 2, 1.0)


def gpu_used_mib() -> int | None:
    """The memory in use on this machine's GPUs, by any process (NVML); None without NVML."""
    gpus = read_gpus(None)
    return sum(g.used_mb for g in gpus) if gpus else None


def children_env(scratch: Path) -> dict[str, str]:
    """For the processes the check starts: their temporary files go into its own folder, which is
    removed however the check ends, also when it had to kill them."""
    return {**os.environ, "TMPDIR": str(scratch)}


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def next_message(proc: subprocess.Popen, log: Path, deadline: float) -> dict:
    """The next JSON object that a musetalk_bench --driven prints (libraries may print other lines)."""
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"musetalk_bench did not answer in time:\n{tail(log)}")
        line = proc.stdout.readline()  # unbuffered: select() sees every byte not read yet
        if not line:
            raise RuntimeError(f"musetalk_bench exited with {proc.wait()}:\n{tail(log)}")
        if line.startswith(b"{"):
            return json.loads(line)


def run_benches(plan: Plan, models: Path, batch_lists: list[tuple[int, ...]], scratch: Path,
                deadline: float) -> list[tuple[list[dict], int | None]]:
    """One musetalk_bench process per list of batch sizes (all as long), measuring at the same
    time once all have loaded; for each batch size, every process's row and the GPU memory they
    hold together after it (None without NVML)."""
    before = gpu_used_mib()
    dtype = ["--dtype", plan.dtype] if plan.dtype else []
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        for batches in batch_lists:
            with tempfile.NamedTemporaryFile(dir=scratch, prefix="musetalk_bench-", suffix=".log", delete=False) as err:
                procs.append((subprocess.Popen(
                    [sys.executable, str(BENCH), "--driven", "--models_dir", str(models), *dtype,
                     "--batch", ",".join(map(str, batches)), "--seconds", str(plan.seconds)],
                    cwd=ROOT, env=children_env(scratch), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                    bufsize=0), Path(err.name)))
        for proc, log in procs:
            next_message(proc, log, deadline)  # loaded
        steps = []
        for _ in batch_lists[0]:
            for proc, _ in procs:
                proc.stdin.write(b"\n")
            rows = [next_message(proc, log, deadline) for proc, log in procs]
            held = gpu_used_mib()
            steps.append((rows, None if before is None else held - before))
    finally:
        for proc, _ in procs:
            proc.stdin.close()
            end(proc)
    return steps


def engine_part(plan: Plan, models: Path, scratch: Path, deadline: float) -> list[Row]:
    """musetalk_bench: one process, each batch size in turn. N processes or 1: N processes of one
    session each, at once, against that process at batch N."""
    steps = run_benches(plan, models, [plan.batches], scratch, deadline)
    alone = {rows[0]["batch"]: (rows[0], held) for rows, held in steps}
    table = [("musetalk_bench", f"batch {batch}", f"{row['fps']:.1f}", mib(held), f"{row['ms']:.1f} ms per call"
              + (f"; torch's peak reserved {row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else ""))
             for batch, (row, held) in alone.items()]
    for n in plan.sessions:
        one, one_mib = alone[n]
        if n == 1:
            table.append(("N processes or 1", "N=1: 1 process, 1 session", f"{one['fps']:.1f}", mib(one_mib),
                          "musetalk_bench's batch 1"))
            continue
        [(rows, apart_mib)] = run_benches(plan, models, [(1,)] * n, scratch, deadline)
        apart = sum(row["fps"] for row in rows)
        memory = f", {one_mib / apart_mib:.2f}x the GPU memory" if one_mib and apart_mib else ""
        table.append(("N processes or 1", f"N={n}: {n} processes, 1 session each", f"{apart:.1f}", mib(apart_mib),
                      f"slowest process {min(row['fps'] for row in rows):.1f} frames/s; 1 process with {n} "
                      f"sessions (musetalk_bench's batch {n}): {one['fps'] / apart:.2f}x the frames/s{memory}"))
    return table


async def wait_ready(url: str, worker: subprocess.Popen, log: Path) -> None:
    """Until the worker's /health says ready (its models loaded and warm)."""
    async with aiohttp.ClientSession() as http:
        while worker.poll() is None:
            try:
                async with http.get(url + "/health") as response:
                    if response.status == 200 and (await response.json())["ready"]:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log)}")


async def engine_frames(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """Frames the worker's engine rendered so far, and in how many model calls."""
    async with http.get(url + "/metrics") as response:
        values = samples(await response.text())
    return values["worker_engine_batch_frames_sum"], values["worker_engine_batch_frames_count"]


async def talk(plan: Plan, url: str, worker: subprocess.Popen, log: Path) -> tuple[dict, float, int | None]:
    """Every viewer asks the worker to speak at once; their video timing while all speak, the
    frames per model call meanwhile, and the GPU memory used then."""
    await wait_ready(url, worker, log)
    async with aiohttp.ClientSession() as http:
        viewers: list[Viewer] = []
        try:
            for _ in range(plan.viewers):
                viewers.append(await Viewer(url, decode_video=False).connect(http))
            for viewer in viewers:
                status, body = await viewer.post(http, "/human", text=TEXT, type="echo")
                if status != 200:
                    raise RuntimeError(f"/human answered {status}: {body}")
            await asyncio.sleep(1.0)  # every session is speaking by then
            frames0, calls0 = await engine_frames(http, url)
            start = time.monotonic()
            await asyncio.sleep(plan.seconds)
            stop = time.monotonic()
            frames1, calls1 = await engine_frames(http, url)
            used = gpu_used_mib()
        finally:
            for viewer in viewers:
                await viewer.close()
    timing = video_timing([viewer.received for viewer in viewers], start, stop)
    return timing, (frames1 - frames0) / max(1.0, calls1 - calls0), used


def worker_part(plan: Plan, models: Path, scratch: Path, deadline: float) -> list[Row]:
    data = scratch / "worker"
    prepare_portrait(data, "bench")
    before = gpu_used_mib()
    port = free_port()
    log = scratch / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "lipsync_worker", "--model", "musetalk", "--avatar_id", "bench",
             "--listenport", str(port), "--max_session", str(plan.viewers)],
            cwd=ROOT, env={**children_env(scratch), "AVATAR_DATA_DIR": str(data), "MODELS_DIR": str(models)},
            stdout=out, stderr=subprocess.STDOUT)
    try:
        timing, per_call, used = asyncio.run(asyncio.wait_for(
            talk(plan, f"http://127.0.0.1:{port}", worker, log), max(0.0, deadline - time.monotonic())))
    finally:
        end(worker)
    return [("worker + viewers", f"{plan.viewers} viewers talking at once",
             f"{timing['fps']:.1f} (lowest {timing['fps_min']:.1f})", mib(None if before is None else used - before),
             f"frame interval p99 {timing['p99_ms']:.0f} ms; {per_call:.1f} frames per model call")]


def status_part(dry_run: bool, scratch: Path, deadline: float) -> list[Row]:
    manager = Manager(scratch / "manager", fake_nvml_env({"gpus": [FAKE_GPU]}) if dry_run else {})
    try:
        data = checked(manager.start(timeout=deadline - time.monotonic()).get("/status")).json()["data"]
    finally:
        manager.stop()
    if not data["gpu"]:
        raise RuntimeError(f"/status lists no GPU: {data['gpu_note']}")
    source = "fake NVML (dry run)" if dry_run else "NVML, the GPU idle"
    return [("manager /status", f"GPU {g['index']}: {g['name']}", "-", f"{g['used_mb']} used of {g['total_mb']}",
             f"{source}: utilisation {g['gpu_utilization_percent']} %, {g['temperature_celsius']} °C, "
             f"{g['power_draw_watts']} W of {g['power_limit_watts']} W") for g in data["gpu"]]


def markdown(title: str, rows: list[Row], failures: list[str]) -> str:
    lines = [title, "", "| part | case | frames/s | GPU MiB | details |", "|---|---|---|---|---|",
             *("| " + " | ".join(row) + " |" for row in rows)]
    return "\n".join([*lines, *(["", "Failures:", "", *failures] if failures else [])]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: tiny random models, N = 1, 2, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "gpu_check.md", help="the table's file")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU here. Run it on a lent GPU machine "
              "(README, Development), or with --dry-run on a CPU.", file=sys.stderr)
        return 2
    # SIGTERM (a timeout's) ends the check through its finally blocks, which end its processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    plan = DRY_RUN if args.dry_run else GPU_PLAN
    gpus = ", ".join(f"{g.name}, {g.total_mb} MiB" for g in read_gpus(None)) or f"no GPU, {os.cpu_count()} CPU cores"
    title = (f"GPU check{' --dry-run (tiny random models on the CPU)' if args.dry_run else ''}: {gpus}; "
             f"Python {platform.python_version()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")
    rows: list[Row] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        scratch = Path(scratch)
        models = save_random(scratch / "models", plan.size)
        # Seconds each part may take: with the random weights (~30 s) and the packages'
        # installation (~30 s), the check ends within 8 minutes on a lent H200 machine.
        parts: list[tuple[str, float, Callable[[float], list[Row]]]] = [
            ("musetalk_bench, N processes or 1", 270, lambda deadline: engine_part(plan, models, scratch, deadline)),
            ("worker + viewers", 90, lambda deadline: worker_part(plan, models, scratch, deadline)),
            ("manager /status", 45, lambda deadline: status_part(args.dry_run, scratch, deadline)),
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for name, limit, part in parts:
            began = time.monotonic()
            try:
                rows += part(began + limit)
            except Exception as exc:  # one part's failure must not cost the others' numbers
                rows.append((name, "failed", "-", "-", f"{type(exc).__name__} after {time.monotonic() - began:.0f} s"))
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
            # Written after each part: a run stopped from outside still leaves what it measured.
            args.out.write_text(markdown(title, rows, failures))
    print(args.out.read_text())
    return 1 if failures else 0

if __name__ == "__main__":
    sys.exit(main())
