"""The lip-sync engines an avatar's avatar_model may name, and what each needs. The worker builds
them (lipsync_worker.engines); the manager places them on hosts and registers avatars for them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineInfo:
    needs_gpu: bool       # runs at speed only on a GPU: the manager places it on one
    needs_material: bool  # material is made for it from the frames (MuseTalk's latents) before it is ready


ENGINES = {
    "puppet": EngineInfo(needs_gpu=False, needs_material=False),  # the avatar's own mouth moved, on the CPU
    "musetalk": EngineInfo(needs_gpu=True, needs_material=True),  # MuseTalk 1.5, weights in MODELS_DIR
}


def needs_gpu(engine: str) -> bool:
    """Whether `engine` needs a GPU; False for a name this build does not know."""
    info = ENGINES.get(engine)
    return info is not None and info.needs_gpu


def ready_as_prepared() -> list[str]:
    """The engines an avatar runs on as soon as its folder exists."""
    return [name for name, info in ENGINES.items() if not info.needs_material]
