"""python -m tts_services --model M [--port P] [--host H]   serve one voice model over HTTP
python -m tts_services check-config                       check the TTS settings in the environment
python -m tts_services offline-voice [--speak]             list the offline voice's voices, and speak a test word

check-config and offline-voice answer with one JSON object on stdout (the manager's doctor runs them)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from aiohttp import web

from contracts.ports import TTS_PORTS
from contracts.settings import ConfigError
from contracts.tts_models import DEFAULT_MODEL, canonical_model

from .client import LocalTTS
from .engines.base import TTSEngine
from .models import create_engine
from .server import create_app
from .settings import Settings

def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts_services", description="Serve one voice model over HTTP.")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="espeak (offline, default), edgetts, sovits, cosyvoice, tacotron; aliases "
                             "such as EdgeTTS, GPT-SoVITS, CosyVoice2, TacoTron2 are accepted")
    parser.add_argument("--port", type=int, help="default: the model's port in contracts/ports.py")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = canonical_model(args.model)
        settings = Settings.from_env()
        engine = create_engine(model, settings)
    except (ValueError, ConfigError) as exc:
        print(f"tts_services: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else TTS_PORTS[model]
    logging.getLogger("tts_services").info("serving %s on http://%s:%d", model, args.host, port)
    web.run_app(create_app(engine, settings), host=args.host, port=port, print=None,
                access_log=None)
    return 0


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
