"""python -m asr_services --model M [--port P] [--host H]    serve one recognition model
python -m asr_services download-models [--whisper SIZE]     fetch faster-whisper weights into MODELS_DIR

A model that cannot run (whisper without its weights, openai without ASR_URL) exits with status 2
and says on stderr what is missing and how to get it."""
from __future__ import annotations

import argparse
import sys

from aiohttp import web

from contracts import model_server, whisper_weights
from contracts.asr_models import DEFAULT_MODEL, canonical_model
from contracts.musetalk_weights import models_dir
from contracts.ports import ASR_PORTS

from .models import create_recognizer
from .server import create_app
from .settings import Settings


def _app(model: str) -> web.Application:
    settings = Settings.from_env()
    return create_app(create_recognizer(model, settings), settings)


def serve(argv: list[str]) -> int:
    return model_server.serve(
        argv, "asr_services", "Serve one speech recognition model.",
        "sphinx (offline English, the default), whisper (weights in MODELS_DIR/whisper), openai (an "
        "OpenAI-compatible server at ASR_URL); aliases such as PocketSphinx or faster-whisper are accepted",
        DEFAULT_MODEL, canonical_model, ASR_PORTS, _app)


def download_models(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr_services download-models",
                                     description="Fetch a faster-whisper model from the Hugging Face hub into "
                                                 "MODELS_DIR/whisper/SIZE (HF_ENDPOINT may name a mirror).")
    parser.add_argument("--whisper", default=whisper_weights.DEFAULT_SIZE, choices=whisper_weights.SIZES,
                        metavar="SIZE", help=f"one of {', '.join(whisper_weights.SIZES)} "
                                             f"(default {whisper_weights.DEFAULT_SIZE})")
    args = parser.parse_args(argv)
    target = whisper_weights.folder(models_dir(), args.whisper)
    try:
        whisper_weights.download(args.whisper, target)
    except Exception as exc:  # the hub client's errors have no common base; all mean the same here
        print(f"download-models: could not fetch {whisper_weights.REPOSITORY.format(size=args.whisper)} from the "
              f"Hugging Face hub ({type(exc).__name__}: {exc}); check the internet connection, HF_ENDPOINT and "
              f"HF_TOKEN, or copy a faster-whisper model's {', '.join(whisper_weights.FILES)} into "
              f"{target.resolve()} by hand", file=sys.stderr)
        return 1
    absent = whisper_weights.missing(target)
    if absent:
        print(f"download-models: {target.resolve()} still lacks {', '.join(absent)}", file=sys.stderr)
        return 1
    print(f"whisper {args.whisper} is in {target.resolve()}; serve it with "
          f"WHISPER_MODEL={args.whisper} python -m asr_services --model whisper", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["download-models"]:
        return download_models(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
