"""How a model's server starts: `python -m tts_services|asr_services --model M [--port P] [--host H]`,
one process a model, on the model's port unless told otherwise. A model that cannot run here
exits with status 2 and its reason on stderr (the host agent shows that in its log)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from aiohttp import web

from .settings import ConfigError


def serve(argv: list[str], package: str, description: str, models_help: str, default_model: str,
          canonical_model: Callable[[str], str], ports: dict[str, int],
          create_app: Callable[[str], web.Application]) -> int:
    """Serve the model argv names; create_app(canonical name) raises ValueError or ConfigError when
    that model cannot run."""
    parser = argparse.ArgumentParser(prog=f"python -m {package}", description=description)
    parser.add_argument("--model", default=default_model, help=models_help)
    parser.add_argument("--port", type=int, help="default: the model's port in contracts/ports.py")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = canonical_model(args.model)
        app = create_app(model)
    except (ValueError, ConfigError) as exc:
        print(f"{package}: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else ports[model]
    logging.getLogger(package).info("serving %s on http://%s:%d", model, args.host, port)
    web.run_app(app, host=args.host, port=port, print=None, access_log=None)
    return 0
