"""What the UNet hears for one video frame: whisper-tiny features of the audio around it.

MuseTalk stacks the encoder's input embedding and every layer's output (5 x 384 for
whisper-tiny) at 50 feature frames a second, and gives each 40 ms video frame a window of 10
of them: 4 before its own 2 and 4 after (80 ms of right context), zeros beyond the audio.

Offline MuseTalk encodes whole 30 s segments. Streaming, each speaking session gets one encoder
pass per video frame over the audio of its current utterance so far plus whatever of the
future is already queued (TTS runs ahead of playback), placed at the start of whisper's window
as MuseTalk places a segment. Nothing waits for audio: where the queue holds less than the
80 ms of right context, the missing features are zeros, which is what MuseTalk gives the end of
an utterance. All sessions of a tick go through the encoder as one batch.
"""
from __future__ import annotations

import numpy as np
import torch

from .models import Models

SAMPLE_RATE = 16000
SAMPLES_PER_FEATURE = 320                  # whisper: 50 feature frames a second
FEATURES_PER_FRAME = 2                     # 25 video frames a second
PAD_FRAMES = 2                             # MuseTalk's audio_padding_length_left and _right
WINDOW = FEATURES_PER_FRAME * (2 * PAD_FRAMES + 1)     # 10 feature frames per video frame
BEFORE = FEATURES_PER_FRAME * PAD_FRAMES                # 4 of them before the frame's own
RIGHT_CONTEXT = (WINDOW - BEFORE - FEATURES_PER_FRAME) * SAMPLES_PER_FEATURE  # 1280 samples: 80 ms


def window_samples(models: Models) -> int:
    """How much audio one encoder pass covers (30 s for whisper-tiny)."""
    return int(models.features.n_samples)


@torch.inference_mode()
def audio_tokens(models: Models, windows: list[np.ndarray], starts: list[int]) -> torch.Tensor:
    """(B, WINDOW x layers, width) tokens, positions added, for B frames.

    windows[b]: float32 16 kHz audio (-1..1), at most window_samples long, starting where the
    utterance started (or as far back as the window allows); starts[b]: the sample in it where
    the frame's own 40 ms begin."""
    mel = models.features(windows, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                          device=str(models.device)).input_features
    hidden = models.whisper(mel.to(models.device, models.dtype), output_hidden_states=True).hidden_states
    stacked = torch.stack(hidden, dim=2)                             # B, T, layers, width
    count, length = stacked.shape[:2]
    first = torch.tensor([s // SAMPLES_PER_FEATURE - BEFORE for s in starts], device=models.device)
    index = first[:, None] + torch.arange(WINDOW, device=models.device)   # B, WINDOW
    heard = torch.tensor([len(w) // SAMPLES_PER_FEATURE for w in windows], device=models.device)
    inside = (index >= 0) & (index < heard[:, None])
    rows = torch.arange(count, device=models.device)[:, None]
    picked = stacked[rows, index.clamp(0, length - 1)] * inside[..., None, None].to(stacked.dtype)
    return models.positions(picked.flatten(1, 2))                    # time-major, as MuseTalk orders them
