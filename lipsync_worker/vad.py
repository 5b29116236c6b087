"""Where a viewer's speech starts and ends in their 16 kHz microphone stream (Silero VAD)."""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from contracts.asr_models import SAMPLE_RATE

WINDOW = 512            # samples the model judges at a time at 16 kHz: 32 ms
CONTEXT = 64            # samples of the window before that the model also sees
# Speech continues while the probability stays above threshold - HYSTERESIS (Silero's own rule),
# so a word's quieter tail does not end the turn.
HYSTERESIS = 0.15


@functools.cache
def _model():
    """The ONNX model the silero-vad package ships, run with onnxruntime directly: the package's
    own wrappers need torch, which costs a worker ~220 MB and over a second to import. One
    inference session serves every viewer of the worker."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1   # 32 ms of audio takes ~0.2 ms
    # Found without importing the package, whose __init__ imports torch.
    package = importlib.util.find_spec("silero_vad")
    if package is None:
        raise RuntimeError("the silero-vad package is not installed: run ./start.sh install")
    path = Path(package.submodule_search_locations[0]) / "data" / "silero_vad.onnx"
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class SileroVAD:
    """The probability that each successive 32 ms window of one stream is speech."""

    def __init__(self) -> None:
        self._model = _model()
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, CONTEXT), np.float32)
        self._rate = np.array(SAMPLE_RATE, np.int64)

    def probability(self, window: np.ndarray) -> float:
        """`window`: WINDOW int16 samples, the ones right after the previous call's."""
        x = np.concatenate([self._context, window.astype(np.float32)[None] / 32768.0], axis=1)
        out, self._state = self._model.run(None, {"input": x, "state": self._state, "sr": self._rate})
        self._context = x[:, -CONTEXT:]
        return float(out[0, 0])


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5          # VAD_THRESHOLD: a window this likely to be speech starts a turn
    silence_ms: int = 400           # VAD_SILENCE_MS: this much silence ends it
    min_speech_ms: int = 250        # VAD_MIN_SPEECH_MS: shorter speech (a cough, a click) is not a turn
    max_speech_s: float = 30.0      # a turn is ended here even if the speaker goes on


class Change(str, Enum):
    STARTED = "started"
    ENDED = "ended"


class VoiceActivity:
    """Turns window probabilities into the starts and ends of speech."""

    def __init__(self, settings: VadSettings, vad: SileroVAD | None = None) -> None:
        self.settings = settings
        self.vad = vad or SileroVAD()
        self.speaking = False
        self.voiced = 0     # samples from the start of this speech to its last voiced window
        self._silence = 0   # samples since that window

    def feed(self, window: np.ndarray) -> Change | None:
        p = self.vad.probability(window)
        if not self.speaking:
            if p < self.settings.threshold:
                return None
            self.speaking, self.voiced, self._silence = True, WINDOW, 0
            return Change.STARTED
        if p >= self.settings.threshold - HYSTERESIS:
            self.voiced += self._silence + WINDOW
            self._silence = 0
        else:
            self._silence += WINDOW
        if (self._silence >= self.settings.silence_ms * SAMPLE_RATE // 1000
                or self.voiced >= self.settings.max_speech_s * SAMPLE_RATE):
            self.speaking = False
            return Change.ENDED
        return None

    @property
    def long_enough(self) -> bool:
        """Whether the speech that just ended counts as a turn."""
        return self.voiced >= self.settings.min_speech_ms * SAMPLE_RATE // 1000
