"""Offline voice: libespeak-ng from the espeakng-loader wheel, driven through ctypes.

The library keeps global state and is not thread-safe, so one process-wide lock serialises
synthesis. A sentence takes ~10 ms, so requests interleave sentence by sentence.
"""
from __future__ import annotations

import asyncio
import ctypes
import threading
from typing import AsyncIterator

import espeakng_loader
import numpy as np

from ..audio import resample_to_pcm16k
from ..text import split_sentences
from .base import AudioChunk, Phoneme, TTSEngine, UpstreamUnavailable, Voice

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_PHONEME_IPA = 0x0002
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
POS_CHARACTER = 1
EVENT_LIST_TERMINATED = 0
EVENT_PHONEME = 7
EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the message
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)

# Friendly timbre names the existing avatars use, mapped to espeak voice variants so that the
# offline fallback keeps at least the gender and character of the configured voice.
TIMBRES = {
    "Default": "en-us",
    "MaleA": "en-us+m1", "MaleB": "en-us+m2", "MaleC": "en-us+m3",
    "MaleD": "en-us+m4", "MaleE": "en-us+m5", "MaleF": "en-us+m6",
    "FemaleA": "en-us+f1", "FemaleB": "en-us+f2", "FemaleC": "en-us+f3",
    "FemaleD": "en-us+f4", "FemaleE": "en-us+f5", "FemaleF": "en-us+f2",
    "ChineseMaleA": "cmn", "ChineseMaleB": "cmn+m2", "ChineseMaleC": "cmn+m3",
    "ChineseFemaleA": "cmn+f2", "ChineseFemaleB": "cmn+f4",
}

# espeak-ng's own name of every listed voice whose name differs (its British English is plain "en").
TARGETS = {"en-gb": "en", **TIMBRES}

# Languages whose text we normalise and whose voices we list by default.
VOICES = [
    Voice("en-us", "en", "male", "American English"),
    Voice("en-gb", "en", "male", "British English"),
    Voice("fa", "fa", "male", "Persian"),
    Voice("cmn", "zh", "male", "Mandarin Chinese"),
] + [
    Voice(name, "zh" if name.startswith("Chinese") else "en",
          "female" if "Female" in name else "male", f"espeak {target}")
    for name, target in TIMBRES.items()
]


class _Library:
    """The one libespeak-ng of this process, initialised on first use."""

    _lock = threading.Lock()
    _instance: "_Library | None" = None

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_PHONEME_IPA | INITIALIZE_DONT_EXIT
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 100, data_path, options)
        if rate <= 0:
            raise UpstreamUnavailable(f"espeak-ng failed to initialise with data at {data_path!r}")
        self.lib = lib
        self.sample_rate = rate
        self._samples: list[np.ndarray] = []
        self._phonemes: list[tuple[int, str]] = []
        # Keep a reference: ctypes callbacks are freed when garbage-collected.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "_Library":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav, count, events) -> int:
        if count > 0:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events and events[i].type != EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == EVENT_PHONEME:
                symbol = event.id.string.decode("utf-8", "replace").strip()
                if symbol:
                    self._phonemes.append((event.audio_position, symbol))
            i += 1
        return 0

    def synthesize(self, text: str, voice_name: str) -> tuple[np.ndarray, list[Phoneme]]:
        """Speak one sentence: int16 samples at self.sample_rate and IPA phoneme timings."""
        with self._lock:
            self._samples, self._phonemes = [], []
            if self.lib.espeak_SetVoiceByName(voice_name.encode()) != EE_OK:
                raise UpstreamUnavailable(f"espeak-ng has no voice {voice_name!r}")
            data = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            if status != EE_OK:
                raise UpstreamUnavailable(f"espeak-ng synthesis failed with status {status}")
            samples = np.concatenate(self._samples) if self._samples else np.zeros(0, np.int16)
            marks = self._phonemes
        duration_ms = len(samples) * 1000 / self.sample_rate
        phonemes = [
            Phoneme(start / 1000, (marks[i + 1][0] if i + 1 < len(marks) else duration_ms) / 1000, symbol)
            for i, (start, symbol) in enumerate(marks)
        ]
        return samples, phonemes


class EspeakEngine(TTSEngine):
    name = "espeak"
    languages = frozenset({"en", "fa", "zh"})
    VOICES = VOICES

    async def synthesize(self, text: str, voice: Voice, lang: str) -> AsyncIterator[AudioChunk]:
        library = await asyncio.to_thread(_Library.get)
        target = TARGETS.get(voice.name, voice.name)
        for sentence in split_sentences(text):
            samples, phonemes = await asyncio.to_thread(library.synthesize, sentence, target)
            yield AudioChunk(resample_to_pcm16k(samples, library.sample_rate), phonemes)
