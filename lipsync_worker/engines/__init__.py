"""Lip-sync engines: audio features and avatar frames in, frames out."""
from __future__ import annotations

from pathlib import Path

from contracts.engines import ENGINES
from contracts.musetalk_weights import models_dir as default_models_dir

from .base import FrameJob, LipSyncEngine


def create_engine(name: str, batch_size: int, models_dir: Path | None = None) -> LipSyncEngine:
    """The engine, its weights checked (musetalk_model.weights.MissingWeights when absent) but not
    loaded; models_dir: $MODELS_DIR when None."""
    if name == "puppet":
        from .puppet import PuppetEngine
        return PuppetEngine(batch_size)
    if name == "musetalk":
        from .musetalk import MuseTalkEngine
        return MuseTalkEngine(batch_size, models_dir or default_models_dir())
    raise ValueError(f"engine {name!r} is not available; available: {', '.join(ENGINES)}")


__all__ = ["FrameJob", "LipSyncEngine", "create_engine"]
