"""python -m tts_services --model M [--port P] [--host H]   serve one voice model over HTTP
python -m tts_services check-config                       check the TTS settings in the environment
python -m tts_services offline-voice [--speak]             list the offline voice's voices, and speak a test word

check-config and offline-voice answer with one JSON object on stdout (the manager's doctor runs them)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiohttp import web

from contracts import model_server
from contracts.ports import TTS_PORTS
from contracts.settings import ConfigError
from contracts.tts_models import DEFAULT_MODEL, canonical_model

from .client import LocalTTS
from .engines.base import TTSEngine
from .models import create_engine
from .server import create_app
from .settings import Settings

def _app(model: str) -> web.Application:
    settings = Settings.from_env()
    return create_app(create_engine(model, settings), settings)


def serve(argv: list[str]) -> int:
    return model_server.serve(
        argv, "tts_services", "Serve one voice model over HTTP.",
        "espeak (offline, default), edgetts, sovits, cosyvoice, tacotron; aliases such as EdgeTTS, "
        "GPT-SoVITS, CosyVoice2, TacoTron2 are accepted",
        DEFAULT_MODEL, canonical_model, TTS_PORTS, _app)


def check_config(argv: list[str]) -> int:
    """{"error": null}, or {"error": the reason} and exit status 2."""
    argparse.ArgumentParser(prog="python -m tts_services check-config",
                            description="Check the TTS settings in the environment.").parse_args(argv)
    try:
        Settings.from_env()
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"error": None}))
    return 0


async def _test_word(engine: TTSEngine) -> int:
    """The samples the engine's default voice makes of one word."""
    voice = engine.voices()[0]
    samples = 0
    try:
        async for chunk in engine.synthesize("ok", voice, voice.lang):
            samples += len(chunk.pcm) // 2
    finally:
        await engine.close()
    return samples


def offline_voice(argv: list[str]) -> int:
    """{"engine", "voices": [names, the default first]}; with --speak also "samples" of a test word,
    or "error" (exit status 1) when the engine cannot speak."""
    parser = argparse.ArgumentParser(prog="python -m tts_services offline-voice",
                                     description="The offline voice every worker can fall back to: list its "
                                                 "voices; --speak: speak a test word too.")
    parser.add_argument("--speak", action="store_true", help="speak one word with the default voice")
    args = parser.parse_args(argv)
    engine = LocalTTS().engine
    answer: dict = {"engine": engine.name, "voices": [voice.name for voice in engine.voices()]}
    code = 0
    if args.speak:
        try:
            answer["samples"] = asyncio.run(_test_word(engine))
        except Exception as exc:  # a library that fails to load or to speak: the reason is the answer
            answer["error"] = f"{type(exc).__name__}: {exc}"
            code = 1
    print(json.dumps(answer))
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check-config"]:
        return check_config(argv[1:])
    if argv[:1] == ["offline-voice"]:
        return offline_voice(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
