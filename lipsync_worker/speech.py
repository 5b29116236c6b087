"""What one session is about to say: queued 16 kHz samples and the phonemes in them, and how
long a text waiting for synthesis is taken to last."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

import numpy as np

from tts_services.engines.base import AudioChunk

SAMPLE_RATE = 16000
# Synthesis pauses while more than this is queued unplayed: a text is turned into sound about as
# fast as it is said, not hours ahead of it (espeak speaks ~500x faster than real time).
AHEAD_SECONDS = 10.0
# A text not yet synthesised is counted at this rate. espeak reads English prose at ~17
# characters a second and Persian at ~12, so prose is over- rather than under-counted. Digits
# (read as number words) and Chinese go slower (~2 a second) and are undercounted until they are
# synthesised; memory stays bounded all the same, by AHEAD_SECONDS and MAX_TEXT_CHARS.
CHARS_PER_SECOND = 10
MIN_UTTERANCE_SECONDS = 1.0   # so that a flood of one-letter texts is counted too


def text_seconds(text: str) -> float:
    """How long saying `text` is reckoned to take, before it is synthesised."""
    return max(MIN_UTTERANCE_SECONDS, len(text) / CHARS_PER_SECOND)


class SpeechBuffer:
    def __init__(self) -> None:
        # Unplayed samples. An array is never written to once made (append makes a new one), so
        # peek hands out read-only views of it: no copy of a long queue per frame, and a view
        # read in the engine's thread stays as it was while more speech is appended.
        self._queue = np.zeros(0, np.int16)
        # Counts appends and clears: while it stays the same, the queue only loses samples from its front.
        self.version = 0
        self._phonemes: deque[tuple[int, int, str]] = deque()  # absolute sample positions
        self._written = 0
        self._played = 0
        self._taken = asyncio.Event()   # set whenever samples leave the queue
        self._watches: deque[tuple[int, Callable[[], None]]] = deque()   # (absolute sample, callback)

    @property
    def pending(self) -> int:
        """Samples queued and not yet played."""
        return self._written - self._played

    def append(self, chunk: AudioChunk) -> None:
        for p in chunk.phonemes:
            self._phonemes.append((self._written + int(p.start * SAMPLE_RATE),
                                   self._written + int(p.end * SAMPLE_RATE), p.symbol))
        self._queue = np.concatenate([self._queue, np.frombuffer(chunk.pcm, "<i2")])
        self._queue.flags.writeable = False
        self._written += len(chunk.pcm) // 2
        self.version += 1

    def when_taken(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the next sample appended is taken to be sent; never, if it is
        cleared first."""
        self._watches.append((self._written, callback))

    async def room(self, seconds: float = AHEAD_SECONDS) -> None:
        """Until at most `seconds` of speech are queued. No timeout of its own: the Stage takes
        40 ms every tick, and a session that closes cancels whoever waits here."""
        while self.pending > seconds * SAMPLE_RATE:
            self._taken.clear()
            await self._taken.wait()

    def take(self, count: int) -> tuple[np.ndarray, str | None]:
        """The next `count` samples (silence past the end) and the phoneme at their middle."""
        queued = self.peek(count)
        samples = np.zeros(count, dtype=np.int16)
        samples[:len(queued)] = queued
        self._queue = self._queue[len(queued):]
        middle = self._played + count // 2
        self._played += len(queued)
        while self._phonemes and self._phonemes[0][1] <= self._played - len(queued):
            self._phonemes.popleft()
        phoneme = next((symbol for start, end, symbol in self._phonemes if start <= middle < end), None)
        while self._watches and self._watches[0][0] < self._played:
            self._watches.popleft()[1]()
        self._taken.set()
        return samples, phoneme

    def peek(self, count: int) -> np.ndarray:
        """Up to `count` queued samples, left in the queue: a read-only view, not a copy."""
        return self._queue[:count]

    def clear(self) -> None:
        self._queue = np.zeros(0, np.int16)
        self.version += 1
        self._phonemes.clear()
        self._watches.clear()
        self._played = self._written
        self._taken.set()
