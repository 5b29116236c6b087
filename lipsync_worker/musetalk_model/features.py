"""What the UNet hears for one video frame: whisper-tiny features of the audio around it, as
MuseTalk computes them for a whole clip.

MuseTalk (musetalk/utils/audio_processor.py) cuts a clip into segments of whisper's window
(30 s) from its start and encodes each on its own, padded with zeros to the window. It stacks
the encoder's input embedding and every layer's output (5 x 384 for whisper-tiny) at 50 feature
frames a second, joins the segments' features and cuts them to the clip's length. Video frame i
(40 ms) gets 10 of them from 2i - 4 on: 4 before its own 2 and 4 after (80 ms of right context),
zeros before the clip's start and past its end. (It counts the clip's features in floating
point, floor(samples / 16000 * 50), one short for a few lengths that are multiples of 320
samples; here they are counted exactly.)

Streaming, the clip is a session's utterance, its current run of speaking frames: every sample
heard since it began, then every sample queued after them (the TTS runs seconds ahead of
playback), cut into segments every 30 s from where it began. A frame's window is cut from the
utterance's features as MuseTalk cuts it, so it equals MuseTalk's for the whole utterance once
the segments it reads are queued to their end. Nothing waits for audio: until then it is
MuseTalk's for what is queued.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .models import Models

SAMPLE_RATE = 16000
SAMPLES_PER_FEATURE = 320                  # whisper: 50 feature frames a second
FEATURES_PER_FRAME = 2                     # 25 video frames a second
SAMPLES_PER_FRAME = FEATURES_PER_FRAME * SAMPLES_PER_FEATURE                # 640
PAD_FRAMES = 2                             # MuseTalk's audio_padding_length_left and _right
WINDOW = FEATURES_PER_FRAME * (2 * PAD_FRAMES + 1)     # 10 feature frames per video frame
BEFORE = FEATURES_PER_FRAME * PAD_FRAMES                # 4 of them before the frame's own
RIGHT_CONTEXT = (WINDOW - BEFORE - FEATURES_PER_FRAME) * SAMPLES_PER_FEATURE  # 1280 samples: 80 ms


def window_samples(models: Models) -> int:
    """How much audio one encoder pass covers, one segment (30 s for whisper-tiny)."""
    return int(models.features.n_samples)


@dataclass
class Utterance:
    """One session's current run of speech and the whisper features of its segments."""
    segment: int                    # samples per segment: whisper's window
    tick: int = -2
    frames: int = 0                 # frames of the run so far: frame f shows samples 640 f to 640 (f + 1)
    origin: int = 0                 # where `audio` starts in the run: the first segment a window may still read
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))   # heard, then queued
    version: int | None = None      # the speech queue's version `audio` was read at
    features: dict[int, torch.Tensor] = field(default_factory=dict)   # segment -> features of its `audio`

    def hear(self, tick: int, samples: np.ndarray, ahead: np.ndarray, version: int | None) -> None:
        """The run's next frame: the samples it shows, those queued after them and the queue's
        version (FrameJob)."""
        if tick != self.tick + 1:  # a new run of speech: a clip of its own, as MuseTalk's are
            self.frames, self.origin, self.version, self.features = 0, 0, None, {}
            self.audio = np.zeros(0, np.int16)
        self.tick = tick
        start = SAMPLES_PER_FRAME * self.frames
        self.frames += 1
        # Segments before the one the window starts in are read by no frame from here on.
        first = max(0, start - BEFORE * SAMPLES_PER_FEATURE) // self.segment * self.segment
        self.audio = self.audio[first - self.origin:]
        self.origin = first
        self.features = {k: f for k, f in self.features.items() if k * self.segment >= first}
        # A segment's features depend on all of its audio (whisper attends over its whole window,
        # and the log-mel is scaled to its loudest part): read the queue up to the end of the last
        # segment the window reads. Again only when the queue changed or the window goes further.
        last = (start + SAMPLES_PER_FRAME + RIGHT_CONTEXT - 1) // self.segment
        end = min((last + 1) * self.segment, start + len(samples) + len(ahead))
        if version is None or version != self.version or self.origin + len(self.audio) < end:
            now = np.concatenate([samples, ahead[:end - start - len(samples)]])
            changed = _first_difference(self.audio[start - self.origin:], now)
            self.audio = np.concatenate([self.audio[:start - self.origin], now])
            self.version = version
            if changed is not None:
                self.features = {k: f for k, f in self.features.items() if (k + 1) * self.segment <= start + changed}

    def reads(self) -> range:
        """The segments the latest frame's window reads features of."""
        start = SAMPLES_PER_FRAME * (self.frames - 1)
        heard = min(start + SAMPLES_PER_FRAME + RIGHT_CONTEXT, self.origin + len(self.audio))
        return range(self.origin // self.segment, (heard - 1) // self.segment + 1)

    def clip(self, segment: int) -> np.ndarray:
        """The audio of one of the utterance's segments."""
        return self.audio[segment * self.segment - self.origin:(segment + 1) * self.segment - self.origin]

    def window(self) -> torch.Tensor:
        """(WINDOW, layers, width): the latest frame's features, its segments encoded."""
        segments = self.reads()
        joined = torch.cat([self.features[k] for k in segments])
        per_segment = self.segment // SAMPLES_PER_FEATURE
        index = FEATURES_PER_FRAME * (self.frames - 1) - BEFORE + torch.arange(WINDOW, device=joined.device)
        inside = (index >= 0) & (index < (self.origin + len(self.audio)) // SAMPLES_PER_FEATURE)
        picked = joined[(index - segments[0] * per_segment).clamp(0, len(joined) - 1)]
        return picked * inside[:, None, None].to(picked.dtype)


def _first_difference(old: np.ndarray, new: np.ndarray) -> int | None:
    """Where `new` first differs from `old`, both taken as padded with zeros (whisper pads each
    segment with them, so silence past the end changes no features); None where it does not."""
    length = max(len(old), len(new))
    differ = np.flatnonzero(np.pad(old, (0, length - len(old))) != np.pad(new, (0, length - len(new))))
    return int(differ[0]) if len(differ) else None


@torch.inference_mode()
def encode(models: Models, clips: list[np.ndarray]) -> torch.Tensor:
    """(B, features per segment, layers, width): whisper's features of B segments' int16 audio."""
    mel = models.features([pcm(clip) for clip in clips], sampling_rate=SAMPLE_RATE, return_tensors="pt",
                          device=str(models.device)).input_features
    hidden = models.whisper(mel.to(models.device, models.dtype), output_hidden_states=True).hidden_states
    return torch.stack(hidden, dim=2)


@torch.inference_mode()
def audio_tokens(models: Models, utterances: list[Utterance]) -> torch.Tensor:
    """(B, WINDOW x layers, width) tokens, positions added, for the latest frame of B utterances.
    The segments they read whose audio changed since they were encoded (or never were) go
    through the encoder first, all in one batch. Whisper costs the same for any length of audio,
    so a segment is encoded once per state of its audio: once per piece of speech the TTS adds
    to it, never more than once a frame."""
    missing = [(u, k) for u in utterances for k in u.reads() if k not in u.features]
    if missing:
        for (u, k), features in zip(missing, encode(models, [u.clip(k) for u, k in missing])):
            u.features[k] = features
    windows = torch.stack([u.window() for u in utterances])
    return models.positions(windows.flatten(1, 2))                  # time-major, as MuseTalk orders them


def pcm(samples: np.ndarray) -> np.ndarray:
    """int16 samples as float32 in -1..1, as whisper's feature extractor wants them."""
    return samples.astype(np.float32) / 32768
