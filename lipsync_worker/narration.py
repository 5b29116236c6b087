"""A session's speech queue that tells the event bus what its viewer starts and stops hearing.

The Stage takes 40 ms of it per tick and sends exactly those samples, so events raised from
take() follow the sound that goes out, not the synthesis, which may run seconds ahead of it.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np

from .speech import SpeechBuffer


class NarratedSpeech(SpeechBuffer):
    """publish(name, **fields) sends an event of this session; busy() says whether more speech
    is still being made (synthesis or an LLM reply in flight), so a gap is not an end."""

    def __init__(self, publish: Callable[..., None], busy: Callable[[], bool]) -> None:
        super().__init__()
        self._publish = publish
        self._busy = busy
        self._heard = 0                                   # samples of speech taken so far
        self._sentences: deque[tuple[int, str, str]] = deque()   # (start sample, kind, text)
        self.audible = False

    def begin_sentence(self, kind: str, text: str) -> None:
        """The next samples appended start a sentence (call it right before appending them)."""
        self._sentences.append((self._heard + self.pending, kind, text))

    def take(self, count: int) -> tuple[np.ndarray, str | None]:
        queued = min(count, self.pending)
        if queued and not self.audible:
            self.audible = True
            self._publish("speaking_started")
        while self._sentences and self._sentences[0][0] < self._heard + queued:
            _, kind, text = self._sentences.popleft()
            self._publish("text", kind=kind, text=text)
        self._heard += queued
        taken = super().take(count)
        self.settle()
        return taken

    def settle(self) -> None:
        """speaking_ended once all that was queued has played and nothing more is coming."""
        if self.audible and not self.pending and not self._busy():
            self.audible = False
            self._publish("speaking_ended", interrupted=False)

    def clear(self) -> None:
        super().clear()
        self._sentences.clear()
        if self.audible:
            self.audible = False
            self._publish("speaking_ended", interrupted=True)
