"""An avatar prepared for MuseTalk: per frame, the face crop, its VAE latents and a blend mask.

- crop: the face box (MuseTalk's, from the parsed face, when the face-parsing weights are in
  MODELS_DIR; else Haar's) reaching 10 px further below the chin, scaled to 256 x 256 for the
  models;
- latents: the VAE's latents of that crop with its lower half blacked out (what the UNet fills
  in) and of the whole crop (the reference), 8 x 32 x 32;
- blend: a square 1.5 times the face around its centre, and a feathered mask over it (MuseTalk's
  "jaw" mask from the parsed face; else the lower half of an ellipse), so only the mouth and jaw
  come from the model. framing.py has the rules.

Crops, masks and latents cost (two passes of the parsing network and two of the VAE a frame);
they are kept in avatars/NAME/musetalk/ beside the frames, with fingerprints of the weights that
made them, and made again when those change. material.json also says which box and mask were
used ("face-parsing", "haar", "ellipse"). A LiveTalking MuseTalk folder (latents.pt, coords.pkl,
mask/, mask_coords.pkl) is used as it is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import zipfile
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
from . import face_parsing
from .framing import blend_box, crop_box, ellipse_mask, parsed_box, parsed_mask

log = logging.getLogger("lipsync_worker.musetalk")

CROP = 256          # the models' face size
FOLDER = "musetalk"
ENCODE_BATCH = 16   # crops per VAE call while preparing


@dataclass
class Material:
    crops: list[Box]            # per avatar frame: where the model's face goes
    blends: list[Box]           # per avatar frame: the square the mask covers
    masks: list[np.ndarray]     # per avatar frame: float32 0..1, the size of its blend square, HxWx1
    latents: torch.Tensor       # N x 8 x 32 x 32, on the models' device
    made_with: dict[str, str]   # the rules of its crops and masks: {"box": ..., "mask": ...} (_framing)


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


def _made_from(avatar: Avatar, models_dir: Path) -> dict:
    """What the material is made from: the frames' Haar boxes, and the weights (the VAE's files,
    and the face-parsing checkpoint or None)."""
    vae = sorted(p for p in (models_dir / VAE).iterdir() if p.is_file())
    parsing = face_parsing.weights_path(models_dir)
    return {"vae": _fingerprint(vae), "face_parsing": _fingerprint([parsing]) if parsing.is_file() else None,
            "faces": [list(r.face) for r in avatar.regions]}


def _fingerprint(files: list[Path]) -> str:
    """Names, sizes and times: no need to hash hundreds of MB."""
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def prepare(avatar: Avatar, vae: AutoencoderKL, device: torch.device, dtype: torch.dtype,
            models_dir: Path) -> Material:
    """The avatar's material: kept when the same weights made it from the same face boxes, else
    made (with the face-parsing network when MODELS_DIR has it) and kept."""
    livetalking = _livetalking(avatar, device)
    if livetalking is not None:
        return livetalking
    made_from = _made_from(avatar, models_dir)
    kept = _kept(avatar.path, made_from)
    if kept is None:
        log.info("%s: preparing MuseTalk's material for %d frames", avatar.name, len(avatar.frames))
        crops, masks, made_with = _framing(avatar, models_dir, device)
        latents = encode(vae, face_crops(avatar.frames, crops), device, dtype)
        _keep(avatar, {"made_from": made_from, "crops": [list(c) for c in crops], "made_with": made_with},
              masks, latents)
    else:
        crops, masks, latents, made_with = kept
    log.info("%s: MuseTalk's face boxes from %s, blend masks from %s", avatar.name, made_with["box"],
             made_with["mask"])
    return Material(crops, [blend_box(c) for c in crops], [m.astype(np.float32)[..., None] / 255 for m in masks],
                    latents.to(device), made_with)


def prepare_with_vae(avatar: Avatar, models_dir: Path) -> Material:
    """Preparation alone, at registration: only the VAE (fp16 on a GPU), and the face parsing
    where MODELS_DIR has it, are loaded."""
    from .models import default_dtype, load_vae, pick_device

    device = pick_device()
    dtype = default_dtype(device)
    return prepare(avatar, load_vae(models_dir, device, dtype), device, dtype, models_dir)


def _framing(avatar: Avatar, models_dir: Path,
             device: torch.device) -> tuple[list[Box], list[np.ndarray], dict[str, str]]:
    """Each frame's crop and blend mask (uint8), and which rules made them (framing.py):
    {"box": "face-parsing"|"haar", "mask": "face-parsing"|"ellipse"}."""
    height, width = avatar.frames[0].shape[:2]
    faces = [r.face for r in avatar.regions]
    if not face_parsing.weights_path(models_dir).is_file():
        crops = [crop_box(face, height) for face in faces]
        return crops, [ellipse_mask(c, blend_box(c)) for c in crops], {"box": "haar", "mask": "ellipse"}
    net = face_parsing.load(models_dir, device)
    found = []
    for frame, face in zip(avatar.frames, faces):
        square = blend_box(face)
        found.append(parsed_box(face_parsing.parse(net, frame, square), square, width, height))
    # One rule for all frames: boxes found two ways would make the face jump between frames.
    parsed = None not in found
    if not parsed:
        log.warning("%s: no nose or chin in the parsed face of %d of %d frames: Haar's face boxes for all",
                    avatar.name, found.count(None), len(found))
    crops = [crop_box(box, height) for box in (found if parsed else faces)]
    masks = []
    for frame, crop in zip(avatar.frames, crops):
        square = blend_box(crop)
        masks.append(parsed_mask(face_parsing.parse(net, frame, square), crop, square))
    return crops, masks, {"box": "face-parsing" if parsed else "haar", "mask": "face-parsing"}


def _kept(path: Path, made_from: dict) -> tuple[list[Box], list[np.ndarray], torch.Tensor, dict[str, str]] | None:
    """The material kept in the avatar's folder when it was made from `made_from`."""
    folder = path / FOLDER
    try:
        meta = json.loads((folder / "material.json").read_text())
        if meta.get("made_from") != made_from:
            return None
        latents = np.load(folder / "latents.npy")
        with np.load(folder / "masks.npz") as kept:
            masks = [kept[f"arr_{i}"] for i in range(len(kept.files))]
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    crops = [tuple(c) for c in meta["crops"]]
    if not len(crops) == len(masks) == len(latents) == len(made_from["faces"]):
        return None
    return crops, masks, torch.from_numpy(latents), meta["made_with"]


def _keep(avatar: Avatar, meta: dict, masks: list[np.ndarray], latents: torch.Tensor) -> None:
    """Written beside the frames, swapped in whole under the avatar's lock; material.json last,
    as it says what the other files were made from."""
    folder = avatar.path / FOLDER
    with avatar_lock(avatar.path.parent.parent, avatar.name):
        if not avatar.path.is_dir():
            return  # deleted meanwhile: nothing to keep it for
        folder.mkdir(exist_ok=True)
        for name, write in (("latents.npy", lambda f: np.save(f, latents.numpy())),
                            ("masks.npz", lambda f: np.savez_compressed(f, *masks)),
                            ("material.json", lambda f: f.write(json.dumps(meta).encode()))):
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
    return Material(crops, blends, masks, latents.to(device), {"box": "livetalking", "mask": "livetalking"})
