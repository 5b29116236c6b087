"""GPUs and their free memory, through NVML (nvidia-ml-py). No library, no driver or no GPU all
mean the same to the manager: run on the CPU. Nothing here raises."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

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

    def to_api(self, reserved_mb: int, instances: int) -> dict:
        return {"index": self.index, "name": self.name, "total_mb": self.total_mb, "used_mb": self.used_mb,
                "free_mb": self.free_mb, "reserved_mb": reserved_mb, "instances": instances}


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


def read_gpus(preferred: list[int] | None) -> list[Gpu]:
    """The GPUs to place on, in preference order (GPU_IDS, else NVML's order), with their memory now.
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
        gpus.append(Gpu(index, name.decode() if isinstance(name, bytes) else str(name),
                        int(memory.total // _MB), int(memory.used // _MB), int(memory.free // _MB)))
    return gpus
