"""The interface every lip-sync engine implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..avatars import Regions


@dataclass
class FrameJob:
    """One video frame to render for one speaking session.

    audio holds the 40 ms of 16 kHz speech this frame shows, so lips and sound come from the
    same samples. state is what engine.new_state() made for the session (smoothing, feature
    windows): an engine may keep context across frames there.
    """
    frame_index: int          # which avatar frame `base` is (engines with per-frame caches)
    base: np.ndarray          # the idle frame of this tick, BGR; never modified in place
    regions: Regions          # face, mouth and eyes in `base`
    audio: np.ndarray         # int16 samples
    phoneme: str | None       # IPA phoneme sounding in the middle of the frame, if known
    state: object


class LipSyncEngine(ABC):
    """Frames of many sessions are rendered in one call, at most batch_size at a time."""

    name: str = ""
    # A slow engine (a model, tens of ms a batch) renders in its own thread; a fast one inline.
    slow: bool = False

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def new_state(self) -> object:
        return None

    @abstractmethod
    def render(self, jobs: list[FrameJob]) -> list[np.ndarray]:
        """One BGR frame per job, in order. Never called for idle frames."""
