"""GPUs and their free memory, through NVML (nvidia-ml-py). No library, no driver or no GPU all
mean the same to the manager: run on the CPU. Nothing here raises."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

log = logging.getLogger("avatar_manager.gpus")
_MB = 1024 * 1024
_init_lock = threading.Lock()
_init_error: str | None = None
_module = None  # pynvml, once nvmlInit succeeded


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_mb: int
    used_mb: int
    free_mb: int
    # None where NVML cannot say (not supported on this GPU, or it failed to answer)
    temperature_c: int | None = None
    utilization_percent: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None

    def to_api(self, reserved_mb: int, instances: int) -> dict:
        """Our fields, then the existing manager's names for the same facts (its dashboards read them)."""
        return {"index": self.index, "name": self.name, "total_mb": self.total_mb, "used_mb": self.used_mb,
                "free_mb": self.free_mb, "reserved_mb": reserved_mb, "instances": instances,
                "gpu_id": self.index,
                "memory": {"total_gb": _gb(self.total_mb), "used_gb": _gb(self.used_mb), "free_gb": _gb(self.free_mb),
                           "usage_percent": round(100 * self.used_mb / self.total_mb, 1) if self.total_mb else 0.0},
                "temperature_celsius": self.temperature_c,
                "gpu_utilization_percent": self.utilization_percent,
                "power_draw_watts": self.power_draw_w,
                "power_limit_watts": self.power_limit_w}


def _gb(mb: int) -> float:
    return round(mb / 1024, 2)


def _optional(read):
    """A reading NVML may not support on this GPU: None then, never an error."""
    try:
        return read()
    except Exception:  # pynvml.NVMLError (NotSupported, NoPermission, GpuIsLost, ...)
        return None


def _nvml():
    """The initialised pynvml module, or None with the reason kept in _init_error."""
    global _init_error, _module
    with _init_lock:
        if _module is not None or _init_error is not None:
            return _module
        try:
            import pynvml
            pynvml.nvmlInit()
        except ImportError as exc:
            _init_error = f"nvidia-ml-py is not installed ({exc})"
        except Exception as exc:  # pynvml.NVMLError and its library/driver-not-found subclasses
            _init_error = f"NVML unavailable: {exc}"
        else:
            _module = pynvml
            return _module
        log.info("%s; instances run on the CPU", _init_error)
        return None


def unavailable_reason() -> str | None:
    """Why there are no GPUs, or None when NVML works."""
    _nvml()
    return _init_error


def read_gpus(preferred: list[int] | None, sensors: bool = False) -> list[Gpu]:
    """The GPUs to place on, in preference order (GPU_IDS, else NVML's order), with their memory now
    (and, with `sensors`, temperature, utilization and power, for /status; placement needs none).
    A GPU that NVML cannot read is left out."""
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:
        log.warning("NVML cannot count GPUs: %s", exc)
        return []
    order = [i for i in preferred if i < count] if preferred is not None else list(range(count))
    gpus = []
    for index in order:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
        except Exception as exc:
            log.warning("NVML cannot read GPU %d: %s", index, exc)
            continue
        gpu = Gpu(index, name.decode() if isinstance(name, bytes) else str(name),
                  int(memory.total // _MB), int(memory.used // _MB), int(memory.free // _MB))
        gpus.append(_with_sensors(nvml, handle, gpu) if sensors else gpu)
    return gpus


def _with_sensors(nvml, handle, gpu: Gpu) -> Gpu:
    power = _optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))  # milliwatts
    limit = _optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    return replace(gpu,
                   temperature_c=_optional(lambda: int(nvml.nvmlDeviceGetTemperature(handle,
                                                                                      nvml.NVML_TEMPERATURE_GPU))),
                   utilization_percent=_optional(lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
                   power_draw_w=round(power / 1000, 1) if power is not None else None,
                   power_limit_w=round(limit / 1000, 1) if limit is not None else None)
