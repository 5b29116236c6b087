"""An avatar prepared for MuseTalk: per frame, the face crop, its VAE latents and a blend mask.

- crop: the face box reaching MuseTalk 1.5's 10 px margin further below the chin, scaled to
  256 x 256 for the models;
- latents: the VAE's latents of that crop with its lower half blacked out (what the UNet fills
  in) and of the whole crop (the reference), 8 x 32 x 32;
- blend: a square 1.5 times the face around its centre, and a mask over it that keeps the lower
  half of the face, feathered, so only the mouth and jaw come from the model.

Latents are what costs (two VAE passes a frame); they are kept in avatars/NAME/musetalk/ beside
the frames, with a fingerprint of the VAE that made them, and made again when it changes. A
LiveTalking MuseTalk folder (latents.pt, coords.pkl, mask/, mask_coords.pkl) is used as it is.
MuseTalk draws its mask with a face-parsing network; without one, the mask here is the lower
half of an ellipse inside the face box.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL

from contracts.avatars import AvatarError, avatar_lock
from contracts.musetalk_weights import VAE

from ..avatars import Avatar, read_pickle
from ..faces import Box

log = logging.getLogger("lipsync_worker.musetalk")

CROP = 256          # the models' face size
MARGIN = 10         # MuseTalk 1.5's extra_margin below the face box, in pixels
EXPAND = 1.5        # the blend square, relative to the face box's longer side
FOLDER = "musetalk"
ENCODE_BATCH = 16   # crops per VAE call while preparing


@dataclass
class Material:
    crops: list[Box]            # per avatar frame: where the model's face goes
    blends: list[Box]           # per avatar frame: the square the mask covers
    masks: list[np.ndarray]     # per avatar frame: float32 0..1, the size of its blend square, HxWx1
    latents: torch.Tensor       # N x 8 x 32 x 32, on the models' device


def crop_box(face: Box, height: int) -> Box:
    x1, y1, x2, y2 = face
    return x1, y1, x2, min(height, y2 + MARGIN)


def blend_box(crop: Box) -> Box:
    x1, y1, x2, y2 = crop
    cx, cy, half = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) // 2 * EXPAND)
    return cx - half, cy - half, cx + half, cy + half


def blend_mask(crop: Box, blend: Box) -> np.ndarray:
    """The lower half of the face, feathered (MuseTalk's blur: a tenth of the square)."""
    bx1, by1, bx2, by2 = blend
    size = bx2 - bx1
    mask = np.zeros((by2 - by1, size), np.uint8)
    x1, y1, x2, y2 = (v - o for v, o in zip(crop, (bx1, by1, bx1, by1)))
    cv2.ellipse(mask, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, 255, -1)
    mask[:size // 2] = 0
    kernel = int(0.1 * size // 2 * 2) + 1
    return cv2.GaussianBlur(mask, (kernel, kernel), 0)


def face_crops(frames: list[np.ndarray], crops: list[Box]) -> np.ndarray:
    """N x 256 x 256 x 3 RGB float32 in -1..1, as the VAE wants them."""
    out = []
    for frame, (x1, y1, x2, y2) in zip(frames, crops):
        face = cv2.resize(frame[max(0, y1):y2, max(0, x1):x2], (CROP, CROP), interpolation=cv2.INTER_LANCZOS4)
        out.append(cv2.cvtColor(face, cv2.COLOR_BGR2RGB))
    return np.stack(out).astype(np.float32) / 127.5 - 1.0


@torch.inference_mode()
def encode(vae: AutoencoderKL, crops: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """N x 8 x 32 x 32: latents of the crop with its lower half black, then of the whole crop.
    The distribution's mean, not a sample of it (MuseTalk samples): the same avatar always
    gives the same latents."""
    out = []
    for i in range(0, len(crops), ENCODE_BATCH):
        whole = torch.from_numpy(crops[i:i + ENCODE_BATCH]).permute(0, 3, 1, 2).to(device, dtype)
        masked = whole.clone()
        masked[:, :, CROP // 2:] = -1.0   # black, in -1..1
        latents = [vae.encode(x).latent_dist.mean * vae.config.scaling_factor for x in (masked, whole)]
        out.append(torch.cat(latents, dim=1).float().cpu())
    return torch.cat(out)


def vae_fingerprint(models_dir: Path) -> str:
    """Changes when the VAE's files do (their names, sizes and times: no need to hash 300 MB)."""
    folder = models_dir / VAE
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.iterdir()) if p.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def prepare(avatar: Avatar, vae: AutoencoderKL, device: torch.device, dtype: torch.dtype,
            fingerprint: str) -> Material:
    """The avatar's material: kept latents when the same VAE made them, else made and kept."""
    livetalking = _livetalking(avatar, device)
    if livetalking is not None:
        return livetalking
    height = avatar.frames[0].shape[0]
    crops = [crop_box(r.face, height) for r in avatar.regions]
    blends = [blend_box(c) for c in crops]
    latents = _kept_latents(avatar.path, crops, fingerprint)
    if latents is None:
        log.info("%s: preparing MuseTalk latents for %d frames", avatar.name, len(crops))
        latents = encode(vae, face_crops(avatar.frames, crops), device, dtype)
        _keep(avatar, crops, latents, fingerprint)
    masks = [blend_mask(c, b).astype(np.float32)[..., None] / 255 for c, b in zip(crops, blends)]
    return Material(crops, blends, masks, latents.to(device))


def prepare_with_vae(avatar: Avatar, models_dir: Path) -> Material:
    """Preparation alone, at registration: only the VAE is loaded (fp16 on a GPU)."""
    from .models import default_dtype, load_vae, pick_device

    device = pick_device()
    dtype = default_dtype(device)
    return prepare(avatar, load_vae(models_dir, device, dtype), device, dtype, vae_fingerprint(models_dir))


def _kept_latents(path: Path, crops: list[Box], fingerprint: str) -> torch.Tensor | None:
    try:
        meta = json.loads((path / FOLDER / "material.json").read_text())
        latents = np.load(path / FOLDER / "latents.npy")
    except (OSError, ValueError):
        return None
    if meta.get("vae") != fingerprint or meta.get("crops") != [list(c) for c in crops]:
        return None
    if latents.shape[0] != len(crops):
        return None
    return torch.from_numpy(latents)


def _keep(avatar: Avatar, crops: list[Box], latents: torch.Tensor, fingerprint: str) -> None:
    """Written beside the frames, swapped in whole under the avatar's lock."""
    folder = avatar.path / FOLDER
    with avatar_lock(avatar.path.parent.parent, avatar.name):
        if not avatar.path.is_dir():
            return  # deleted meanwhile: nothing to keep it for
        folder.mkdir(exist_ok=True)
        for name, write in (("latents.npy", lambda f: np.save(f, latents.numpy())),
                            ("material.json", lambda f: f.write(json.dumps(
                                {"vae": fingerprint, "crops": [list(c) for c in crops]}).encode()))):
            fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(temporary, folder / name)


def _livetalking(avatar: Avatar, device: torch.device) -> Material | None:
    """LiveTalking's own MuseTalk preparation, when the folder has all of it for every frame."""
    path = avatar.path
    files = [path / "latents.pt", path / "coords.pkl", path / "mask_coords.pkl", path / "mask"]
    if not all(p.exists() for p in files):
        return None
    try:
        kept = torch.load(path / "latents.pt", map_location="cpu", weights_only=True)
        latents = torch.cat([t.reshape(1, 8, t.shape[-2], t.shape[-1]) for t in kept]).float()
        crops = [tuple(int(v) for v in box) for box in read_pickle(path / "coords.pkl")]
        blends = [tuple(int(v) for v in box) for box in read_pickle(path / "mask_coords.pkl")]
        mask_files = sorted(p for p in (path / "mask").iterdir() if p.suffix.lower() in (".png", ".jpg"))
        masks = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in mask_files]
    except (OSError, EOFError, AttributeError, RuntimeError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise AvatarError(f"{path}: LiveTalking's MuseTalk files are unreadable ({exc}); prepare it again") from exc
    counts = {len(avatar.frames), len(latents), len(crops), len(blends), len(masks)}
    if len(counts) != 1 or any(m is None for m in masks):
        log.warning("%s: LiveTalking's MuseTalk files do not cover every frame; preparing anew", avatar.name)
        return None
    masks = [m.astype(np.float32)[..., None] / 255 for m in masks]
    return Material(crops, blends, masks, latents.to(device))
