"""`python -m lipsync_worker prepare --json`: one upload made into an avatar for the manager, as
contracts.prepare describes (a request on stdin, one answer on stdout)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from contracts import prepare
from contracts.avatars import AvatarError, read_config
from contracts.engines import ready_as_prepared
from contracts.musetalk_weights import models_dir

from . import avatars
from .bounds import TooCostly
from .intake import UnsupportedMedia
from .musetalk_model import weights
from .quality import QualityError


class Refused(Exception):
    """The upload makes no avatar: the answer's status, message and detail."""

    def __init__(self, status: int, message: str, **detail) -> None:
        super().__init__(message)
        self.answer = {"status": status, "message": message, **detail}


def prepare_avatar(request: prepare.Request) -> dict:
    """Make the avatar's folder (and its MuseTalk latents when asked); the RESULT facts.
    Refused, with nothing written, when the upload makes no avatar."""
    started = time.monotonic()
    data_dir = Path(request.data_dir)
    try:
        if request.latents:  # before any work: without weights there would be no latents
            weights.check(models_dir())
        prepared = avatars.prepare(Path(request.source), request.name, data_dir, overrides=request.overrides,
                                   bounds=request.bounds)
    except weights.MissingWeights as exc:
        raise Refused(503, str(exc)) from None
    except TooCostly as exc:
        raise Refused(413, str(exc)) from None
    except UnsupportedMedia as exc:
        raise Refused(415, str(exc), detected=exc.detected) from None
    except QualityError as exc:
        measured = {k: v for k, v in exc.metrics.items() if k != "faces_per_frame"}
        raise Refused(422, str(exc), reasons=list(exc.reasons), metrics=measured) from None
    except AvatarError as exc:
        raise Refused(422, str(exc)) from None
    config = read_config(data_dir, request.name)
    ready = ready_as_prepared()
    made_with = None
    if request.latents:
        from .musetalk_model.material import prepare_with_vae  # torch: only where latents are made

        made_with = prepare_with_vae(avatars.load(data_dir, request.name), models_dir()).made_with
        ready.append("musetalk")
    return {"source_type": prepared.kind, "source_format": prepared.format, "frame_count": prepared.frame_count,
            "size": list(prepared.size), "faces": prepared.faces, "quality": prepared.quality.to_json(),
            "tts_model": config["tts_model"], "timbre": config["timbre"], "asr_model": config["asr_model"],
            "language": config["language"], "engine": config["avatar_model"], "engines_ready": ready,
            "musetalk_material": made_with, "processing_seconds": round(time.monotonic() - started, 3)}


def main() -> int:
    """Answer the request on stdin; the exit status as contracts.prepare says."""
    # The answer goes to the real stdout; whatever else would be written there (a library's
    # chatter) goes to stderr, the log, and cannot spoil the answer.
    answer_to = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with answer_to:
        try:
            request = prepare.Request.from_json(sys.stdin.read(prepare.MAX_REQUEST_BYTES))
        except ValueError as exc:
            print(f"prepare: not a prepare request ({exc})", file=sys.stderr)
            return 1
        try:
            answer, code = prepare_avatar(request), 0
        except Refused as exc:
            print(f"prepare: {exc}", file=sys.stderr)
            answer, code = exc.answer, prepare.REFUSED
        answer_to.write(json.dumps(answer) + "\n")
    return code
