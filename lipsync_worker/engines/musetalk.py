"""musetalk: MuseTalk 1.5 on the worker's GPU (fp16), or its CPU (fp32).

One set of models per worker. Every speaking frame of every session in a tick goes through
the models together, batch_size at a time: whisper features of each session's audio, the
UNet at timestep 0 on the avatar frame's cached latents, the VAE's decoder, and the new lower
face blended into the idle frame through the frame's mask.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..avatars import Avatar
from ..faces import Box
from ..musetalk_model import weights
from .base import FrameJob, LipSyncEngine

if TYPE_CHECKING:  # torch is imported when the models load, after the weights are checked
    import torch

    from ..musetalk_model.features import Utterance

log = logging.getLogger("lipsync_worker.musetalk")


class MuseTalkEngine(LipSyncEngine):
    name = "musetalk"
    slow = True

    def __init__(self, batch_size: int, models_dir: Path, device: str | None = None, dtype: str | None = None) -> None:
        """device: "cuda", "cpu", ...; the GPU when there is one. dtype: "float16", "float32", ...;
        fp16 on a GPU and fp32 on the CPU when None."""
        super().__init__(batch_size)
        weights.check(models_dir)  # at once, before any port is opened or torch imported
        self.models_dir = models_dir
        self.device = device
        self.dtype = dtype
        self.models = None
        self.material = None
        self._faces: list[Box] = []

    def load(self, avatar: Avatar) -> None:
        from ..musetalk_model import features, material, models

        import torch

        self.models = models.load(self.models_dir, models.pick_device(self.device),
                                  getattr(torch, self.dtype) if self.dtype else None)
        m = self.models
        log.info("MuseTalk on %s (%s), batches of up to %d", m.device, str(m.dtype).removeprefix("torch."),
                 self.batch_size)
        self.material = material.prepare(avatar, m.vae, m.device, m.dtype, self.models_dir)
        self._faces = [r.face for r in avatar.regions]
        # A frame's window reads whisper's encoding of each segment it touches, and the last of
        # those may end a whole segment after the window's 80 ms past the frame.
        self.lookahead = features.window_samples(m) + features.RIGHT_CONTEXT
        # A whole batch through every model: kernels picked and memory reserved before the first
        # viewer's first word, not during it.
        silence = np.zeros(640, np.int16)
        self.render([FrameJob(0, avatar.frames[0], avatar.regions[0], silence, None, self.new_state(), tick=0,
                              ahead=silence) for _ in range(self.batch_size)])
        self.ready = True

    def new_state(self) -> Utterance:
        from ..musetalk_model.features import Utterance, window_samples

        return Utterance(window_samples(self.models))

    def hear(self, jobs: list[FrameJob]) -> torch.Tensor:
        """The UNet's audio tokens for the jobs' frames, each heard by its session's Utterance."""
        from ..musetalk_model.features import audio_tokens

        for job in jobs:
            job.state.hear(job.tick, job.audio, job.ahead, job.version)
        return audio_tokens(self.models, [job.state for job in jobs])

    def render(self, jobs: list[FrameJob]) -> list[np.ndarray]:
        import torch

        m = self.models
        with torch.inference_mode():
            tokens = self.hear(jobs)
            latents = self.material.latents[[job.frame_index for job in jobs]].to(m.dtype)
            predicted = m.unet(latents, 0, encoder_hidden_states=tokens).sample
            faces = m.vae.decode(predicted / m.scaling).sample
            faces = ((faces / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [self._blend(job, face[..., ::-1]) for job, face in zip(jobs, faces)]

    def _blend(self, job: FrameJob, face: np.ndarray) -> np.ndarray:
        """The model's face (RGB->BGR done) into the idle frame, through the frame's mask."""
        i = job.frame_index
        # A still avatar sways at rest: follow its face box by the same offset.
        dx, dy = job.regions.face[0] - self._faces[i][0], job.regions.face[1] - self._faces[i][1]
        x1, y1, x2, y2 = (v + d for v, d in zip(self.material.crops[i], (dx, dy, dx, dy)))
        bx1, by1, bx2, by2 = (v + d for v, d in zip(self.material.blends[i], (dx, dy, dx, dy)))
        frame = job.base.copy()
        h, w = frame.shape[:2]
        # Only the blend square changes (the mask is zero outside it): the face is pasted there.
        fx1, fy1, fx2, fy2 = max(bx1, 0), max(by1, 0), min(bx2, w), min(by2, h)
        region = frame[fy1:fy2, fx1:fx2].astype(np.float32)
        new = region.copy()
        resized = cv2.resize(face, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
        cx1, cy1, cx2, cy2 = max(x1, fx1), max(y1, fy1), min(x2, fx2), min(y2, fy2)
        new[cy1 - fy1:cy2 - fy1, cx1 - fx1:cx2 - fx1] = resized[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
        mask = self.material.masks[i][fy1 - by1:fy2 - by1, fx1 - bx1:fx2 - bx1]
        frame[fy1:fy2, fx1:fx2] = (new * mask + region * (1 - mask) + 0.5).astype(np.uint8)
        return frame
