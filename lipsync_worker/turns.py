"""How long each stage of a spoken turn takes, counted from the end of the user's speech: what a
person feels as the avatar's reaction time (exported as worker_turn_stage_seconds)."""
from __future__ import annotations

import time

from .metrics import METRICS

# In the order they happen. first_audio_sent: the reply's first samples handed to the viewer's
# audio sender (aiortc encodes and sends them at once).
STAGES = ("vad_end", "transcript", "llm_first_token", "tts_first_audio", "first_audio_sent")


class Turn:
    def __init__(self, speech_end: float) -> None:
        self.speech_end = speech_end   # time.monotonic() when the last voiced window arrived
        self._marked: set[str] = set()

    def mark(self, stage: str) -> None:
        """Stage `stage` is reached now; only its first time counts."""
        if stage not in self._marked:
            self._marked.add(stage)
            METRICS.turn_stage.labels(stage).observe(time.monotonic() - self.speech_end)
