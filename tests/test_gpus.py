"""GPU placement through NVML, with NVML faked at the module boundary (tests/fake_nvml/pynvml.py):
avatar_manager.gpus in process, then a real manager whose workers get CUDA_VISIBLE_DEVICES."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path

import psutil
import pytest
import requests
from harness.manager import FAKE_NVML_DIR, fake_nvml_env
from harness.processes import wait_for

from avatar_manager import gpus
from avatar_manager.settings import Settings


def gpu(free_mb: int, total_mb: int = 81920, name: str = "H100", **extra) -> dict:
    return {"name": name, "total_mb": total_mb, "free_mb": free_mb, **extra}


# --- avatar_manager.gpus in process --------------------------------------------------------------

@pytest.fixture
def nvml(monkeypatch):
    """nvml(world) -> the fake pynvml, fresh, as `import pynvml` finds it, with gpus.py's
    once-per-process NVML initialisation forgotten."""
    def install(world: dict | str):
        monkeypatch.setenv("FAKE_NVML", world if isinstance(world, str) else json.dumps(world))
        spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML_DIR / "pynvml.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        spec.loader.exec_module(module)
        monkeypatch.setattr(gpus, "_module", None)
        monkeypatch.setattr(gpus, "_init_error", None)
        return module
    return install


def test_no_gpus(nvml):
    nvml({"gpus": []})
    assert gpus.read_gpus(None) == []
    assert gpus.unavailable_reason() is None


def test_one_gpu_in_megabytes(nvml):
    nvml({"gpus": [gpu(70000, name="NVIDIA H100 80GB HBM3")]})
    assert gpus.read_gpus(None) == [gpus.Gpu(0, "NVIDIA H100 80GB HBM3", 81920, 11920, 70000)]
    assert gpus.unavailable_reason() is None


def test_two_gpus_in_nvml_order(nvml):
    nvml({"gpus": [gpu(1000, total_mb=24576, name="L4"), gpu(70000)]})
    assert [(g.index, g.name, g.total_mb, g.free_mb) for g in gpus.read_gpus(None)] == [
        (0, "L4", 24576, 1000), (1, "H100", 81920, 70000)]


@pytest.mark.parametrize("gpu_ids, order", [
    ("1,0", [1, 0]),
    ("0,1", [0, 1]),
    ("1", [1]),
    ("3,1", [1]),       # there is no GPU 3: dropped
    ("2,3", []),
])
def test_gpu_ids_order_and_filter(nvml, gpu_ids, order):
    nvml({"gpus": [gpu(10000), gpu(20000)]})
    preferred = Settings.from_env({"GPU_IDS": gpu_ids}).gpu_ids
    assert [g.index for g in gpus.read_gpus(preferred)] == order


@pytest.mark.parametrize("error, why", [("init", "NVML Shared Library Not Found"), ("driver", "Driver Not Loaded")])
def test_nvml_init_error_means_no_gpus_and_says_why(nvml, error, why):
    fake = nvml({"error": error})
    with pytest.raises(fake.NVMLError):  # as the real library raises it
        fake.nvmlInit()
    assert gpus.read_gpus(None) == []
    assert gpus.read_gpus([0, 1]) == []
    reason = gpus.unavailable_reason()
    assert reason is not None and "NVML" in reason and why in reason


def test_no_nvidia_ml_py_means_no_gpus_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    monkeypatch.setattr(gpus, "_module", None)
    monkeypatch.setattr(gpus, "_init_error", None)
    assert gpus.read_gpus(None) == []
    assert "nvidia-ml-py is not installed" in gpus.unavailable_reason()


@pytest.mark.parametrize("world", [
    {"error": "memory", "index": 1, "gpus": [gpu(10000), gpu(20000), gpu(30000)]},
    {"gpus": [gpu(10000), gpu(20000, error="memory"), gpu(30000)]},
    {"gpus": [gpu(10000), gpu(20000, error="name"), gpu(30000)]},
    {"gpus": [gpu(10000), gpu(20000, error="handle"), gpu(30000)]},
])
def test_a_gpu_that_cannot_be_read_is_left_out(nvml, world):
    nvml(world)
    assert [(g.index, g.free_mb) for g in gpus.read_gpus(None)] == [(0, 10000), (2, 30000)]
    assert [g.index for g in gpus.read_gpus([2, 1, 0])] == [2, 0]
    assert gpus.unavailable_reason() is None


def test_a_failing_count_means_no_gpus(nvml):
    nvml({"error": "count", "gpus": [gpu(10000)]})
    assert gpus.read_gpus(None) == []


def test_a_bytes_name_from_an_older_pynvml_is_decoded(nvml, monkeypatch):
    fake = nvml({"gpus": [gpu(10000)]})
    monkeypatch.setattr(fake, "nvmlDeviceGetName", lambda handle: b"Tesla T4")
    assert gpus.read_gpus(None)[0].name == "Tesla T4"


def test_memory_is_read_again_on_every_call(nvml, tmp_path):
    world = tmp_path / "nvml.json"
    world.write_text(json.dumps({"gpus": [gpu(70000)]}))
    nvml(str(world))
    assert gpus.read_gpus(None)[0].free_mb == 70000
    world.write_text(json.dumps({"gpus": [gpu(5000), gpu(9000)]}))
    assert [(g.index, g.free_mb) for g in gpus.read_gpus(None)] == [(0, 5000), (1, 9000)]


# --- a real manager, its workers and /status -----------------------------------------------------

def nvml_env(world: dict | Path, **env) -> dict[str, str]:
    """The manager's environment: the fake pynvml first on its path, the fault-injection worker."""
    return {**fake_nvml_env(world), "WORKER_MODULE": "tests.fake_worker", "MAX_AVATARS": "4", **env}


def start(m, avatar: str) -> dict:
    r = m.start_avatar(avatar)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def worker_cuda(instance: dict) -> str | None:
    """CUDA_VISIBLE_DEVICES as the worker on the instance's port saw it."""
    health = requests.get(f"http://127.0.0.1:{instance['port']}/health", timeout=5).json()
    assert health["pid"] == instance["pid"] and health["avatar"] == instance["real_avatar_name"]
    return health["cuda_visible_devices"]


def status_gpus(m) -> tuple[list[dict], str | None]:
    data = m.get("/status").json()["data"]
    return data["gpu"], data["gpu_note"]


def workers_of(m) -> list[list[str]]:
    argvs = []
    for process in m.tree():
        try:
            argvs.append(process.cmdline())
        except psutil.Error:  # gone meanwhile
            pass
    return [argv for argv in argvs if "tests.fake_worker" in argv]


def test_no_gpu_runs_the_worker_on_the_cpu(manager):
    m = manager(**nvml_env({"gpus": []}))
    m.avatar("a")
    instance = start(m, "a")
    assert instance["gpu"] == -1
    assert worker_cuda(instance) == ""
    listed, note = status_gpus(m)
    assert listed == [] and note


def test_one_gpu(manager):
    m = manager(**nvml_env({"gpus": [gpu(70000, temperature_c=61, utilization_percent=37, power_w=212.25,
                                         power_limit_w=700)]}))
    m.avatar("a")
    instance = start(m, "a")
    assert instance["gpu"] == 0
    assert worker_cuda(instance) == "0"
    listed, note = status_gpus(m)
    # Ours, then the existing manager's names for the same GPU (its dashboards read those).
    assert listed == [{"index": 0, "name": "H100", "total_mb": 81920, "used_mb": 11920, "free_mb": 70000,
                       "reserved_mb": 0, "instances": 1,
                       "gpu_id": 0,
                       "memory": {"total_gb": 80.0, "used_gb": 11.64, "free_gb": 68.36, "usage_percent": 14.6},
                       "temperature_celsius": 61, "gpu_utilization_percent": 37,
                       "power_draw_watts": 212.2, "power_limit_watts": 700.0}]
    assert note is None


def test_status_says_null_for_what_nvml_cannot_read(manager):
    m = manager(**nvml_env({"gpus": [gpu(8000, total_mb=16384, name="T4", temperature_c=40), gpu(1000)]}))
    listed, _ = status_gpus(m)
    assert [(g["gpu_id"], g["name"], g["memory"]["usage_percent"], g["temperature_celsius"],
             g["gpu_utilization_percent"], g["power_draw_watts"], g["power_limit_watts"]) for g in listed] == [
        (0, "T4", 51.2, 40, None, None, None), (1, "H100", 98.8, None, None, None, None)]


def test_sensor_readings_in_process(nvml):
    nvml({"gpus": [gpu(70000, temperature_c=55, utilization_percent=90, power_w=300.04, power_limit_w=350)]})
    assert gpus.read_gpus(None) == [gpus.Gpu(0, "H100", 81920, 11920, 70000)]  # placement reads no sensor
    assert gpus.read_gpus(None, sensors=True) == [gpus.Gpu(0, "H100", 81920, 11920, 70000, temperature_c=55,
                                                           utilization_percent=90, power_draw_w=300.0,
                                                           power_limit_w=350.0)]


def test_two_gpus_the_one_with_most_free_memory(manager):
    m = manager(**nvml_env({"gpus": [gpu(20000, name="A"), gpu(60000, name="B")]}))
    m.avatar("a")
    instance = start(m, "a")
    assert instance["gpu"] == 1
    assert worker_cuda(instance) == "1"
    listed, _ = status_gpus(m)
    assert [(g["index"], g["name"], g["free_mb"], g["instances"]) for g in listed] == [(0, "A", 20000, 0),
                                                                                     (1, "B", 60000, 1)]


@pytest.mark.parametrize("gpu_ids, expected, listed", [
    ("", 0, [0, 1]),        # a tie: NVML's order
    ("1,0", 1, [1, 0]),     # a tie: GPU_IDS's order
    ("3,1", 1, [1]),        # GPU 3 does not exist and GPU 0 is not wanted
])
def test_gpu_ids_preference_on_ties(manager, gpu_ids, expected, listed):
    m = manager(**nvml_env({"gpus": [gpu(40000), gpu(40000)]}, GPU_IDS=gpu_ids))
    m.avatar("a")
    instance = start(m, "a")
    assert instance["gpu"] == expected
    assert worker_cuda(instance) == str(expected)
    assert [g["index"] for g in status_gpus(m)[0]] == listed


def test_a_gpu_that_cannot_be_read_is_not_used(manager):
    m = manager(**nvml_env({"error": "memory", "index": 0, "gpus": [gpu(70000), gpu(20000)]}))
    m.avatar("a")
    instance = start(m, "a")
    assert instance["gpu"] == 1
    assert [g["index"] for g in status_gpus(m)[0]] == [1]


def test_a_full_gpu_puts_puppet_on_the_cpu_and_refuses_musetalk(manager):
    m = manager(**nvml_env({"gpus": [gpu(4000, total_mb=24576)]}, GPU_MIN_FREE_MB="6000"))
    m.avatar("heavy", avatar_model="musetalk")
    m.avatar("light")

    r = m.start_avatar("heavy")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "error" and "GPU_MIN_FREE_MB=6000" in body["message"], body
    assert body["reason"] == "capacity"
    assert "GPU 0 4000 MB" in body["message"]
    # Nothing spawned, nothing recorded.
    assert m.get("/avatar/list").json()["data"] == []
    assert m.get("/avatar/info/heavy").status_code == 404
    assert workers_of(m) == []
    assert not list(m.log_dir.glob("avatar_heavy_*"))

    instance = start(m, "light")
    assert instance["gpu"] == -1
    assert worker_cuda(instance) == ""
    assert [i["real_avatar_name"] for i in m.get("/avatar/list").json()["data"]] == ["light"]


def test_concurrent_cold_starts_land_on_different_gpus(manager, store_env):
    # Each GPU fits one instance; without reservations both would pick GPU 0.
    m = manager(**nvml_env({"gpus": [gpu(10000), gpu(9000)]}, GPU_MIN_FREE_MB="6000", **store_env))
    for name in ("a", "b"):
        m.avatar(name, fault="slow:2")
    results: dict[str, requests.Response] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, m.start_avatar(n))) for n in ("a", "b")]
    for t in threads:
        t.start()
    try:
        # Both STARTING together: each GPU shows the memory its starting instance reserved.
        def both_starting():
            data = m.get("/status").json()["data"]
            return data if data["manager"]["states"]["STARTING"] == 2 else None
        data = wait_for(both_starting, what="both instances STARTING")
        assert [(g["index"], g["free_mb"], g["reserved_mb"], g["instances"]) for g in data["gpu"]] == [
            (0, 10000, 6000, 1), (1, 9000, 6000, 1)]
    finally:
        for t in threads:
            t.join(timeout=60)
    instances = {}
    for name in ("a", "b"):
        assert results[name].status_code == 200, results[name].text
        instances[name] = results[name].json()["data"]
    assert sorted(i["gpu"] for i in instances.values()) == [0, 1]
    assert sorted(worker_cuda(i) for i in instances.values()) == ["0", "1"]
    # RUNNING: the reservations are released.
    assert [g["reserved_mb"] for g in status_gpus(m)[0]] == [0, 0]


def write_world(path: Path, world: dict) -> None:
    """Replace the fake's world at once: the manager may read it at any moment."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(world))
    os.replace(part, path)


def test_free_memory_is_read_on_every_cold_start(manager, tmp_path):
    world = tmp_path / "nvml.json"
    write_world(world, {"gpus": [gpu(30000), gpu(20000)]})
    m = manager(**nvml_env(world, GPU_MIN_FREE_MB="6000"))
    for name in ("a", "b", "c"):
        m.avatar(name)
    assert start(m, "a")["gpu"] == 0
    # Worker a took memory on GPU 0.
    write_world(world, {"gpus": [gpu(5000), gpu(20000)]})
    assert [g["free_mb"] for g in status_gpus(m)[0]] == [5000, 20000]
    b = start(m, "b")
    assert b["gpu"] == 1 and worker_cuda(b) == "1"
    # Both full now: the puppet engine runs on the CPU.
    write_world(world, {"gpus": [gpu(5000), gpu(3000)]})
    c = start(m, "c")
    assert c["gpu"] == -1 and worker_cuda(c) == ""


def test_nvml_init_error_runs_on_the_cpu_and_says_why(manager):
    m = manager(**nvml_env({"error": "init"}))
    assert m.get("/ready").status_code == 200
    m.avatar("a")
    instance = start(m, "a")
    assert instance["gpu"] == -1
    assert worker_cuda(instance) == ""
    listed, note = status_gpus(m)
    assert listed == []
    assert "NVML" in note and "NVML Shared Library Not Found" in note


@pytest.mark.parametrize("world, gpu_ids, says", [
    ({"gpus": [gpu(40000)]}, "3", "GPU_IDS"),
    ({"gpus": []}, "", "no GPU"),
])
def test_status_says_why_no_gpu_is_listed(manager, world, gpu_ids, says):
    m = manager(**nvml_env(world, GPU_IDS=gpu_ids))
    listed, note = status_gpus(m)
    assert listed == []
    assert says in note
    if not gpu_ids:
        assert "GPU_IDS" not in note


def test_a_musetalk_avatar_on_a_gpu_is_running_only_once_its_worker_is_warm(manager, demo_source, tiny_models):
    """The real worker with small random MuseTalk models (on the CPU: NVML is faked, CUDA is not)."""
    m = manager(**nvml_env({"gpus": [gpu(70000)]}, WORKER_MODULE="lipsync_worker", MODELS_DIR=str(tiny_models)))
    m.avatar("muse", source=demo_source, avatar_model="musetalk")
    instance = start(m, "muse")
    assert instance["gpu"] == 0 and instance["state"] == "RUNNING"
    health = requests.get(f"http://127.0.0.1:{instance['port']}/health", timeout=5).json()
    assert (health["engine"], health["ready"], health["status"]) == ("musetalk", True, "ok")
