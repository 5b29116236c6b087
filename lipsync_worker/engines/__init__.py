"""Lip-sync engines: audio features and avatar frames in, frames out."""
from __future__ import annotations

from .base import FrameJob, LipSyncEngine

def create_engine(name: str, batch_size: int) -> LipSyncEngine:
    if name == "puppet":
        from .puppet import PuppetEngine
        return PuppetEngine(batch_size)
    raise ValueError(f"engine {name!r} is not available; available: puppet")


__all__ = ["FrameJob", "LipSyncEngine", "create_engine"]
