"""MuseTalk throughput: talking frames per second through the whole engine (whisper features,
UNet, VAE decode, blend into the 512x512 frame) for a batch of sessions, and GPU memory.

  python bench/musetalk_bench.py --tiny                                # CPU, tiny random weights
  python bench/musetalk_bench.py --size full --dtype fp16 --batch 1,4,8,16,32   # a GPU

Random weights of the real sizes cost what the real ones do; they are saved to disk and read
back through the worker's own loader. Each row renders one frame for each of B sessions per
call, as the worker does for B talking sessions in one tick. Each session speaks one long
utterance queued ahead, as the TTS queues it, and a new sentence is appended to it every
SENTENCE_TICKS frames (2 s, about one espeak sentence), so whisper re-encodes the utterance's
segment as often as it does in the worker, not every frame.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.musetalk import save_random  # noqa: E402
from lipsync_worker import avatars  # noqa: E402
from lipsync_worker.engines import FrameJob  # noqa: E402
from lipsync_worker.engines.musetalk import MuseTalkEngine  # noqa: E402
from lipsync_worker.musetalk_model import models  # noqa: E402

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


SENTENCE_TICKS = 50
MAX_TICKS = 1500   # a batch size's measurement ends here at the latest (60 s of speech)


def speech(rng: np.random.Generator, count: int) -> np.ndarray:
    return (rng.standard_normal(count) * 5000).astype(np.int16)


def measure(engine: MuseTalkEngine, avatar, batch: int, seconds: float) -> dict:
    import torch

    rng = np.random.default_rng(batch)
    states = [engine.new_state() for _ in range(batch)]
    cuda = engine.models.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()  # what the warm-up at the largest batch left cached is not this batch's
        torch.cuda.reset_peak_memory_stats()
    engine.batch_size = batch

    utterances = [speech(rng, 640 * (MAX_TICKS + 1) + engine.lookahead) for _ in states]

    def jobs(tick: int) -> list[FrameJob]:
        # Sessions' sentences arrive at different ticks, as they do in the worker.
        return [FrameJob(0, avatar.frames[0], avatar.regions[0], audio[640 * tick:640 * (tick + 1)], None, s,
                         tick, audio[640 * (tick + 1):640 * (tick + 1) + engine.lookahead],
                         (tick + 7 * i) // SENTENCE_TICKS)
                for i, (s, audio) in enumerate(zip(states, utterances))]

    engine.render(jobs(0))  # this batch size's first call picks its kernels
    times, tick = [], 1
    began = time.perf_counter()
    while (time.perf_counter() - began < seconds or len(times) < 3) and tick < MAX_TICKS:
        t0 = time.perf_counter()
        engine.render(jobs(tick))  # returns host frames: the GPU's work is done
        times.append(time.perf_counter() - t0)
        tick += 1
    per_call = float(np.median(times))
    return {"batch": batch, "ms": 1000 * per_call, "fps": batch / per_call,
            "peak_mib": torch.cuda.max_memory_reserved() / 2 ** 20 if cuda else None}


def driven(engine: MuseTalkEngine, avatar, batches: list[int], seconds: float, load_s: float) -> None:
    """--driven, for bench/gpu_check.py, which starts several of us, lets all measure at once, and
    reads the GPU's memory between steps while each of us holds its own: a JSON line after loading
    and after each batch size, each followed by a wait for its go (a line on stdin, or its end)."""
    print(json.dumps({"load_s": load_s}), flush=True)
    sys.stdin.readline()
    for batch in batches:
        print(json.dumps(measure(engine, avatar, batch, seconds)), flush=True)
        sys.stdin.readline()


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random models (same as --size tiny)")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on a GPU, fp32 on a CPU")
    parser.add_argument("--device", default=None, help="cuda, cpu, ...; default: the GPU when there is one")
    parser.add_argument("--batch", default="1,4,8,16,32", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per batch size")
    parser.add_argument("--models_dir", type=Path, default=None, help="real weights instead of random ones")
    parser.add_argument("--driven", action="store_true",
                        help="for bench/gpu_check.py: JSON lines, each step waiting for a line on stdin")
    args = parser.parse_args()
    size = "tiny" if args.tiny else args.size
    batches = [int(b) for b in args.batch.split(",")]

    import torch

    with tempfile.TemporaryDirectory(prefix="musetalk-bench-") as scratch:
        scratch = Path(scratch)
        models_dir = args.models_dir or save_random(scratch / "models", size)
        avatars.prepare(ROOT / "assets" / "astronaut.png", "bench", scratch / "data")
        avatar = avatars.load(scratch / "data", "bench")
        device = models.pick_device(args.device)
        if device.type == "cuda":
            torch.cuda.init()
            free_before = torch.cuda.mem_get_info(device)[0]
        engine = MuseTalkEngine(max(batches), models_dir, str(device), DTYPES.get(args.dtype))
        began = time.perf_counter()
        engine.load(avatar)
        load_s = time.perf_counter() - began
        if args.driven:
            driven(engine, avatar, batches, args.seconds, load_s)
            return
        rows = [measure(engine, avatar, b, args.seconds) for b in batches]
        used_mib = (free_before - torch.cuda.mem_get_info(device)[0]) / 2 ** 20 if device.type == "cuda" else None

    m = engine.models
    dtype = str(m.dtype).removeprefix("torch.")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    weights_kind = f"weights from {args.models_dir}" if args.models_dir else f"{size} random weights"
    print(f"device: {where}; {weights_kind}, {dtype}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    print(f"load + warm-up (batch {max(batches)}): {load_s:.1f} s; frames 512x512 (face crop 256x256)")
    print()
    print("| batch | ms per call | frames/s | real-time sessions (25 fps) | GPU peak reserved MiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        print(f"| {r['batch']} | {r['ms']:.1f} | {r['fps']:.1f} | {r['fps'] / 25:.1f} | {peak} |")
    if used_mib is not None:
        print(f"\nGPU memory of this process (CUDA context, weights, cache; free memory before vs after): "
              f"{used_mib:.0f} MiB")
    best = max(rows, key=lambda r: r["fps"])
    print(f"\nmusetalk: {best['fps']:.0f} fps (batch {best['batch']}, {size}, {dtype}, {where})")


if __name__ == "__main__":
    main()
