"""Measurements on 16 kHz mono s16le PCM for assertions."""
import numpy as np


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / 16000


def rms(pcm: bytes) -> float:
    x = samples(pcm)
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


def dominant_hz(pcm: bytes) -> float:
    x = samples(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * 16000 / len(x))
