"""The worker's `prepare --json` command: how the manager has an upload made into an avatar
folder, in a process of its own (OpenCV, the decoders and MuseTalk's VAE never load in the
manager, and a decoder that blows up takes only that process with it).

Its command line is fixed (ARGV): what a user wrote, the avatar's name included, travels in the
request on stdin, since argv is public to every local user and a value could read as an option.
The child reads one JSON request (Request) on stdin and writes one JSON object on stdout:
  exit 0         the facts the registry record is made of (RESULT);
  exit REFUSED   {"status": 413|415|422|503, "message": why, and detail: detected, reasons, metrics};
  otherwise      it failed; its stderr says how, and stdout holds no answer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .bounds import Bounds

ARGV = ("-m", "lipsync_worker", "prepare", "--json")   # after the Python interpreter
REFUSED = 2
MAX_REQUEST_BYTES = 64 * 1024   # a request holds a path, a name and a few short settings
# What a request may set in the avatar's config.json.
OVERRIDES = ("tts_model", "timbre", "asr_model", "language", "avatar_model")
BOUNDS = ("max_pixels", "max_video_pixels", "memory_mb")  # what the manager's settings decide of Bounds
# musetalk_material: how MuseTalk's material was made, {"box": "face-parsing"|"haar", "mask":
# "face-parsing"|"ellipse"}; null when none was (the request's latents is false).
RESULT = ("source_type", "source_format", "frame_count", "size", "faces", "quality", "tts_model", "timbre",
          "asr_model", "language", "engine", "engines_ready", "musetalk_material", "processing_seconds")


@dataclass(frozen=True)
class Request:
    source: str                  # the upload, a path the child can read
    name: str                    # the avatar's name, checked by the child too
    data_dir: str                # $AVATAR_DATA_DIR: the folder goes to data_dir/avatars/NAME
    overrides: dict[str, str] = field(default_factory=dict)   # of OVERRIDES
    bounds: Bounds = Bounds()
    latents: bool = False        # make MuseTalk's latents too (the avatar's engine is musetalk)

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "name": self.name, "data_dir": self.data_dir,
                           "overrides": self.overrides, "bounds": {k: getattr(self.bounds, k) for k in BOUNDS},
                           "latents": self.latents})

    @classmethod
    def from_json(cls, text: str) -> "Request":
        """The request; ValueError saying what is wrong with a malformed one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the request is not a JSON object")
        strings = {k: data.get(k) for k in ("source", "name", "data_dir")}
        overrides, bounds = data.get("overrides", {}), data.get("bounds", {})
        if (not all(isinstance(v, str) and v for v in strings.values()) or not isinstance(overrides, dict)
                or not isinstance(bounds, dict) or not isinstance(data.get("latents", False), bool)):
            raise ValueError("the request needs source, name and data_dir (strings), overrides and bounds "
                             "(objects), latents (true or false)")
        if set(overrides) - set(OVERRIDES) or not all(isinstance(v, str) for v in overrides.values()):
            raise ValueError(f"overrides may set {', '.join(OVERRIDES)}, each a string")
        if set(bounds) - set(BOUNDS) or not all(isinstance(v, int) and v >= 0 for v in bounds.values()):
            raise ValueError(f"bounds may set {', '.join(BOUNDS)}, each a whole number")
        return cls(**strings, overrides=overrides, bounds=Bounds(**bounds), latents=data.get("latents", False))
