"""A stand-in for nvidia-ml-py's `pynvml`, the one test double the design allows (no GPU here).

Put this folder first on PYTHONPATH (a manager subprocess) or into sys.modules["pynvml"] (in
process) and avatar_manager.gpus talks to it instead of the real library. It implements only what
gpus.py calls, with the real library's behaviour: nothing works before nvmlInit(), errors are
NVMLError subclasses, memory comes in bytes, names are str.

The world it reports comes from the environment variable FAKE_NVML, read on every call:
  a JSON object, or the path of a file holding one (so a test can change free memory while a
  manager runs). Unset or empty: no NVML library, like a host without the driver.

  {"gpus": [{"name": "H100", "total_mb": 81920, "free_mb": 70000}, ...]}
      used_mb defaults to total_mb - free_mb; name defaults to "Fake GPU <index>".
  {"error": "init"}              nvmlInit raises NVMLError_LibraryNotFound
  {"error": "driver"}            nvmlInit raises NVMLError_DriverNotLoaded
  {"error": "count", ...}        nvmlDeviceGetCount raises NVMLError_Unknown
  {"error": "memory", "index": 1, "gpus": [...]}
                                 nvmlDeviceGetMemoryInfo raises NVMLError_GpuIsLost for GPU 1
                                 (index defaults to 0)
  A GPU entry may also carry its own "error": "memory" | "name" | "handle".
  A GPU entry may give "temperature_c", "utilization_percent", "power_w" and "power_limit_w";
  a reading it leaves out raises NVMLError_NotSupported, as on GPUs without that sensor.

Processes that use memory: with a world in a file, each file in the folder FILE.used/ named by a
live process's pid and holding "INDEX MB" adds MB to that GPU's used memory (and takes it from
its free memory) for as long as that process lives: tests/fake_worker.py writes one for its
"gpu_mb:MB" fault, as a real worker's CUDA context would take memory.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

_MB = 1024 * 1024

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


class NVMLError(Exception):
    """As in nvidia-ml-py: NVMLError(code) builds the subclass for that code."""
    _valClassMapping: dict[int, type] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value):
        super().__init__(value)

    def __str__(self):
        return NVMLError._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")


def _subclass(name: str, code: int) -> type:
    cls = type(name, (NVMLError,), {})
    NVMLError._valClassMapping[code] = cls
    return cls


NVMLError_Uninitialized = _subclass("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _subclass("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _subclass("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_DriverNotLoaded = _subclass("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _subclass("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_GpuIsLost = _subclass("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _subclass("NVMLError_Unknown", NVML_ERROR_UNKNOWN)

NVML_TEMPERATURE_GPU = 0

_initialised = False


@dataclass(frozen=True)
class c_nvmlMemory_t:  # noqa: N801 - the real library's name
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class c_nvmlUtilization_t:  # noqa: N801 - the real library's name
    gpu: int
    memory: int


@dataclass(frozen=True)
class _Handle:
    index: int


def _world() -> dict:
    raw = os.environ.get("FAKE_NVML", "").strip()
    if not raw:
        return {"error": "init"}
    if not raw.startswith("{"):
        with open(raw) as f:
            raw = f.read()
    world = json.loads(raw)
    if not isinstance(world, dict):
        raise ValueError(f"FAKE_NVML must be a JSON object, not {world!r}")
    return world


def _gpus() -> list[dict]:
    return list(_world().get("gpus", []))


def _taken_mb(index: int) -> int:
    """What live processes took on GPU `index` (the FILE.used/ folder), in MB."""
    raw = os.environ.get("FAKE_NVML", "").strip()
    folder = f"{raw}.used"
    if raw.startswith("{") or not os.path.isdir(folder):
        return 0
    taken = 0
    for name in os.listdir(folder):
        try:
            os.kill(int(name), 0)
            gpu, mb = open(os.path.join(folder, name)).read().split()
        except (ValueError, OSError):
            continue  # gone, or not written yet
        taken += int(mb) if int(gpu) == index else 0
    return taken


def _check_init() -> None:
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _gpu(handle: _Handle) -> dict:
    _check_init()
    gpus = _gpus()
    if not isinstance(handle, _Handle) or not 0 <= handle.index < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return gpus[handle.index]


def nvmlInit() -> None:
    global _initialised
    error = _world().get("error")
    if error == "init":
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    if error == "driver":
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    _initialised = True


def nvmlShutdown() -> None:
    global _initialised
    _check_init()
    _initialised = False


def nvmlDeviceGetCount() -> int:
    _check_init()
    if _world().get("error") == "count":
        raise NVMLError(NVML_ERROR_UNKNOWN)
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _check_init()
    gpus = _gpus()
    if not 0 <= index < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if gpus[index].get("error") == "handle":
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    return _Handle(index)


def nvmlDeviceGetMemoryInfo(handle: _Handle, version=None) -> c_nvmlMemory_t:
    gpu = _gpu(handle)
    world = _world()
    if gpu.get("error") == "memory" or (world.get("error") == "memory" and handle.index == world.get("index", 0)):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    total_mb = int(gpu.get("total_mb", 81920))
    free_mb = int(gpu.get("free_mb", total_mb))
    used_mb = int(gpu.get("used_mb", total_mb - free_mb))
    taken = _taken_mb(handle.index)
    return c_nvmlMemory_t(total=total_mb * _MB, free=(free_mb - taken) * _MB, used=(used_mb + taken) * _MB)


def nvmlDeviceGetName(handle: _Handle) -> str:
    gpu = _gpu(handle)
    if gpu.get("error") == "name":
        raise NVMLError(NVML_ERROR_UNKNOWN)
    return str(gpu.get("name", f"Fake GPU {handle.index}"))


def _reading(handle: _Handle, name: str):
    value = _gpu(handle).get(name)
    if value is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return value


def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return int(_reading(handle, "temperature_c"))


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> c_nvmlUtilization_t:
    return c_nvmlUtilization_t(gpu=int(_reading(handle, "utilization_percent")), memory=0)


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    """Milliwatts, as the real library."""
    return int(float(_reading(handle, "power_w")) * 1000)


def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:
    """Milliwatts, as the real library."""
    return int(float(_reading(handle, "power_limit_w")) * 1000)
