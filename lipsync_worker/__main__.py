"""python -m lipsync_worker --avatar_id NAME [LiveTalking flags]   serve one avatar over WebRTC
python -m lipsync_worker prepare IMAGE_OR_VIDEO --avatar_id NAME   make an avatar folder
python -m lipsync_worker prepare --json                           the same for the manager (contracts.prepare)
python -m lipsync_worker prepare-clip VIDEO --avatar_id NAME --audiotype TYPE   add a clip (/set_audiotype)
python -m lipsync_worker download-models                          fetch MuseTalk's weights"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.avatars import AvatarError, data_dir
from contracts.musetalk_weights import FETCHED, missing, models_dir
from contracts.ports import TTS_PORTS
from contracts.tts_models import canonical_model

from .musetalk_model import weights

# Each command imports what it needs when it runs: a preparation (the manager runs one per
# registration) loads no WebRTC, HTTP server or TTS client.
if TYPE_CHECKING:
    from tts_services.client import FallbackTTS, LocalTTS

    from .settings import WorkerSettings

SHUTDOWN_SECONDS = 2.0


def make_tts(settings: WorkerSettings) -> tuple[LocalTTS | FallbackTTS, str | None]:
    """The speech source and the voice to ask it for. espeak without a server runs in this
    process; any other model falls back to it when its server fails."""
    from tts_services.client import FallbackTTS, LocalTTS, TTSClient

    model = canonical_model(settings.tts)
    local = LocalTTS()
    if model == "espeak" and not settings.tts_server:
        if settings.voice and local.engine.find_voice(settings.voice) is None:
            logging.getLogger("lipsync_worker").warning(
                "espeak has no voice %r; speaking with its default voice", settings.voice)
            return local, None
        return local, settings.voice
    url = settings.tts_server or f"http://127.0.0.1:{TTS_PORTS[model]}"
    return FallbackTTS(TTSClient(url, token=settings.api_token), local), settings.voice


def prepare(argv: list[str]) -> int:
    if argv == ["--json"]:
        from . import preparation
        return preparation.main()
    from . import avatars
    parser = argparse.ArgumentParser(prog="python -m lipsync_worker prepare",
                                     epilog="prepare --json: the request on stdin, the answer on stdout "
                                            "(how the manager registers an avatar; see contracts/prepare.py)")
    parser.add_argument("source", type=Path, help="a photo or a video of one face")
    parser.add_argument("--avatar_id", dest="avatar_name", required=True, help="the avatar's name")
    parser.add_argument("--max_seconds", type=float, default=10.0, help="cut a video to this length")
    parser.add_argument("--tts_model", default=None)
    parser.add_argument("--timbre", default=None)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("tts_model", args.tts_model), ("timbre", args.timbre)) if v}
    try:
        prepared = avatars.prepare(args.source, args.avatar_name, data_dir(), max_seconds=args.max_seconds,
                                   overrides=overrides)
    except AvatarError as exc:  # UnsupportedMedia and QualityError too: a reason to show
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    if prepared.quality.verdict != "good":
        print(f"prepare: {prepared.quality.verdict}: {'; '.join(prepared.quality.reasons)}", file=sys.stderr)
    print(prepared.path)
    return 0


def prepare_clip(argv: list[str]) -> int:
    from . import clips
    parser = argparse.ArgumentParser(prog="python -m lipsync_worker prepare-clip",
                                     description="Add a clip (a wave, a nod, ...) to an avatar: POST /set_audiotype "
                                                 "with its audiotype plays it while the session is silent.")
    parser.add_argument("source", type=Path, help="a video (or a photo) with the avatar's framing")
    parser.add_argument("--avatar_id", dest="avatar_name", required=True, help="the avatar's name")
    parser.add_argument("--audiotype", required=True, help="the clip's name, e.g. wave, or a number like 2")
    parser.add_argument("--max_seconds", type=float, default=10.0, help="cut the video to this length")
    args = parser.parse_args(argv)
    try:
        path = clips.prepare_clip(args.source, args.avatar_name, args.audiotype, data_dir(),
                                  max_seconds=args.max_seconds)
    except AvatarError as exc:
        print(f"prepare-clip: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the avatar folder was removed or replaced while the clip was written
        print(f"prepare-clip: could not write the clip into avatar {args.avatar_name}: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def serve(argv: list[str]) -> int:
    from aiohttp import web

    from . import avatars, fence
    from .animation import IdleAnimation
    from .engines import create_engine
    from .llm import ChatLLM
    from .media import Stage
    from .server import create_app
    from .session import Sessions
    from .settings import from_args

    try:
        settings = from_args(argv)
        engine = create_engine(settings.model, settings.batch_size, settings.models_dir)
        avatar = avatars.load(settings.data_dir, settings.avatar_name)
        tts, voice = make_tts(settings)
        fence.from_env()  # on a fleet of several hosts: end when the host agent stops renewing its lease
    except (ValueError, AvatarError, weights.MissingWeights) as exc:
        print(f"lipsync_worker: {exc}", file=sys.stderr)
        return 2
    llm = (ChatLLM(settings.llm_url, settings.llm_model, settings.llm_api_key, settings.llm_system_prompt)
           if settings.llm_url else None)
    stage = Stage(IdleAnimation(avatar), engine)
    sessions = Sessions(stage, engine.new_state, settings.max_session, settings.ice_servers,
                        settings.connect_timeout, max_connecting_per_client=settings.max_connecting_per_client)
    app = create_app(settings, avatar, stage, sessions, tts, voice, llm)
    logging.getLogger("lipsync_worker").info(
        "avatar %s (%s engine) on http://%s:%d", avatar.name, engine.name, settings.host, settings.port)
    # Requests still running at SIGTERM (an upload trickling in) get SHUTDOWN_SECONDS, well inside
    # the manager's STOP_TIMEOUT, not aiohttp's default of 60 s.
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None,
                shutdown_timeout=SHUTDOWN_SECONDS)
    return 2 if app["failed"] else 0


def download_models(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync_worker download-models",
                                     description="Fetch MuseTalk 1.5, sd-vae-ft-mse, whisper-tiny and the BiSeNet "
                                                 "face parsing from the Hugging Face hub into MODELS_DIR "
                                                 "(HF_ENDPOINT may name a mirror).")
    parser.add_argument("--models_dir", type=Path, default=models_dir())
    args = parser.parse_args(argv)
    try:
        fetched = weights.download(args.models_dir)
    except Exception as exc:  # the hub client's errors have no common base; all mean the same here
        print(f"download-models: could not fetch from the Hugging Face hub ({type(exc).__name__}: {exc}); "
              f"missing: {', '.join(missing(args.models_dir, FETCHED))}; check the internet connection, "
              f"HF_ENDPOINT and HF_TOKEN, or copy the files into {args.models_dir.resolve()} by hand",
              file=sys.stderr)
        return 1
    for path in fetched:
        print(path)
    absent = missing(args.models_dir, FETCHED)
    if absent:
        print(f"download-models: still missing: {', '.join(absent)}", file=sys.stderr)
        return 1
    print(f"MuseTalk weights complete in {args.models_dir.resolve()}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["prepare"]:
        return prepare(argv[1:])
    if argv[:1] == ["prepare-clip"]:
        return prepare_clip(argv[1:])
    if argv[:1] == ["download-models"]:
        return download_models(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
