"""The interface every lip-sync engine implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ..avatars import Avatar, Regions


@dataclass
class FrameJob:
    """One video frame to render for one speaking session.

    audio holds the 40 ms of 16 kHz speech this frame shows, so lips and sound come from the
    same samples; ahead, up to engine.lookahead samples already queued after them (an engine
    that looks at what comes next never makes the picture wait for it). version is the speech
    queue's (SpeechBuffer.version) when ahead was read: the same number as at the session's
    previous frame says nothing was appended or cleared in between, so the queue is what it was
    then less this frame's samples (None: not known). state is what engine.new_state() made for
    the session: an engine may keep context across frames there. tick counts the Stage's
    frames, so a gap says a session stopped speaking in between.
    """
    frame_index: int          # which avatar frame `base` is (engines with per-frame caches)
    base: np.ndarray          # the idle frame of this tick, BGR; never modified in place
    regions: Regions          # face, mouth and eyes in `base`
    audio: np.ndarray         # int16 samples
    phoneme: str | None       # IPA phoneme sounding in the middle of the frame, if known
    state: object
    tick: int = 0
    ahead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    version: int | None = None


class LipSyncEngine(ABC):
    """Frames of many sessions are rendered in one call, at most batch_size at a time."""

    name: str = ""
    # A slow engine (a model, tens of ms a batch) renders in its own thread; a fast one inline.
    slow: bool = False
    lookahead: int = 0        # samples of queued speech after a frame it wants in FrameJob.ahead

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.ready = False

    def load(self, avatar: Avatar) -> None:
        """Models loaded, the avatar prepared, a first batch run: the worker is ready after this.
        Called once, in a thread, while /health says it is warming up."""
        self.ready = True

    def new_state(self) -> object:
        return None

    @abstractmethod
    def render(self, jobs: list[FrameJob]) -> list[np.ndarray]:
        """One BGR frame per job, in order. Never called for idle frames."""
