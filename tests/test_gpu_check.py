"""bench/gpu_check.sh --dry-run: the GPU check end to end on the CPU (tiny random models, a fake
NVML for the manager), so that it still runs on the day a GPU is lent."""
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import ROOT

CHECK = str(ROOT / "bench" / "gpu_check.sh")
# One thread per process: the check runs several torch processes at once, and on 2 cores their
# threads would wait for one another (several times slower, with CI's own load beside them).
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
NUMBER = re.compile(r"\d+(\.\d+)?")


def test_the_dry_run_measures_every_part(tmp_path):
    out = tmp_path / "gpu_check.md"
    check = subprocess.Popen([CHECK, "--dry-run", "--out", str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        printed, _ = check.communicate(timeout=170)
    except subprocess.TimeoutExpired:
        os.killpg(check.pid, signal.SIGTERM)  # the check ends what it started
        printed, _ = check.communicate(timeout=60)
        pytest.fail(f"the dry run took over 170 s:\n{printed}")
    assert check.returncode == 0, printed
    table = out.read_text()
    assert table in printed
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| part ")]
    assert {part for part, *_ in rows} == {"musetalk_bench", "N processes or 1", "worker + viewers",
                                           "manager /status"}, table
    for part, case, fps, gpu_mib, _ in rows:
        assert NUMBER.match(gpu_mib if part == "manager /status" else fps), f"{part}, {case}: no number in\n{table}"
    assert {"batch 1", "batch 2", "N=1: 1 process, 1 session", "N=2: 2 processes, 1 session each",
            "2 viewers talking at once", "GPU 0: fake GPU"} <= {case for _, case, *_ in rows}, table


def test_without_a_gpu_it_says_so_and_measures_nothing(tmp_path):
    done = subprocess.run([CHECK, "--out", str(tmp_path / "gpu_check.md")], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "sees no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "gpu_check.md").exists()
