"""python -m tts_services --model M [--port P] [--host H]: serve one voice model over HTTP."""
from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from ports_config import TTS_PORTS

from .models import DEFAULT_MODEL, canonical_model, create_engine
from .server import create_app
from .settings import ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts_services", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="espeak (offline, default), edgetts, sovits, cosyvoice, tacotron; aliases "
                             "such as EdgeTTS, GPT-SoVITS, CosyVoice2, TacoTron2 are accepted")
    parser.add_argument("--port", type=int, help="default: the model's port in ports_config.py")
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


if __name__ == "__main__":
    sys.exit(main())
