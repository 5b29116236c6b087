"""What one session is about to say: queued 16 kHz samples and the phonemes in them."""
from __future__ import annotations

from collections import deque

import numpy as np

from tts_services.engines.base import AudioChunk

SAMPLE_RATE = 16000


class SpeechBuffer:
    def __init__(self) -> None:
        self._pcm = bytearray()
        self._phonemes: deque[tuple[int, int, str]] = deque()  # absolute sample positions
        self._written = 0
        self._played = 0

    @property
    def pending(self) -> int:
        """Samples queued and not yet played."""
        return self._written - self._played

    def append(self, chunk: AudioChunk) -> None:
        for p in chunk.phonemes:
            self._phonemes.append((self._written + int(p.start * SAMPLE_RATE),
                                   self._written + int(p.end * SAMPLE_RATE), p.symbol))
        self._pcm += chunk.pcm
        self._written += len(chunk.pcm) // 2

    def take(self, count: int) -> tuple[np.ndarray, str | None]:
        """The next `count` samples (silence past the end) and the phoneme at their middle."""
        queued = self.peek(count)
        size = 2 * len(queued)
        samples = np.zeros(count, dtype=np.int16)
        samples[:len(queued)] = queued
        del self._pcm[:size]
        middle = self._played + count // 2
        self._played += size // 2
        while self._phonemes and self._phonemes[0][1] <= self._played - size // 2:
            self._phonemes.popleft()
        phoneme = next((symbol for start, end, symbol in self._phonemes if start <= middle < end), None)
        return samples, phoneme

    def peek(self, count: int) -> np.ndarray:
        """Up to `count` queued samples, left in the queue."""
        size = min(len(self._pcm), 2 * count)
        return np.frombuffer(bytes(self._pcm[:size]), dtype="<i2")

    def clear(self) -> None:
        self._pcm.clear()
        self._phonemes.clear()
        self._played = self._written
