"""python -m avatar_manager [serve] [--role all|api|agent]
                                                       run the API (gunicorn) and the host agent
                                                       (all), or one of them (REDIS_URL needed)
python -m avatar_manager doctor                        check this host and explain what to fix
python -m avatar_manager register PATH --name NAME     prepare an avatar from a photo or a video"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .logs import setup_logging
from .settings import ConfigError, Settings
from .store import StoreError, open_store
from .agent import HostAgent
from .instances import url_host

GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")


ROLES = ("all", "api", "agent")


def serve(argv: list[str]) -> int:
    """all: the API and this host's agent, one fleet of one host (SQLite or Redis); api: only the
    stateless REST API; agent: only this host's agent. The last two make a fleet of several
    hosts, which only Redis can hold."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m avatar_manager serve")
    parser.add_argument("--role", choices=ROLES, default="all")
    role = parser.parse_args(argv).role
    try:
        settings = Settings.from_env()
        if role != "all" and not settings.redis_url:
            raise ConfigError(f"--role {role} makes a fleet of several hosts, which needs REDIS_URL (a store "
                              "every host reaches); SQLite serves one host: run without --role")
        store = open_store(settings)
        store.ping()
    except (ConfigError, StoreError) as exc:
        print(f"avatar_manager: {exc}", file=sys.stderr)
        return 2
    host = url_host(settings.host)
    api = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--bind", f"{host}:{settings.port}",
           "avatar_manager.api:create_app()"]
    if role == "api":  # gunicorn is the service: it replaces this process
        store.close()
        os.execv(sys.executable, api)
    setup_logging(settings.log_dir)
    try:
        HostAgent(settings, store, api if role == "all" else None, fencing=role == "agent").run()
    except SystemExit as exc:
        print(f"avatar_manager: {exc}", file=sys.stderr)
        return 1
    return 0


def register(argv: list[str]) -> int:
    """Prepare and record an avatar (the worker's prepare child does the preparing); prints its
    record as JSON, or the reason it was refused (exit status 2)."""
    import argparse
    import json

    from contracts.asr_models import MODELS as ASR_MODELS
    from contracts.avatars import DEFAULT_CONFIG

    from . import registration
    parser = argparse.ArgumentParser(prog="python -m avatar_manager register")
    parser.add_argument("path", type=Path, help="a photo or a video of one face")
    parser.add_argument("--name", required=True)
    parser.add_argument("--owner", default="")
    parser.add_argument("--description", default="")
    parser.add_argument("--tts-model", default=None)
    parser.add_argument("--timbre", default=None)
    parser.add_argument("--asr-model", default=None,
                        help=f"{', '.join(ASR_MODELS)} (default {DEFAULT_CONFIG['asr_model']})")
    parser.add_argument("--language", default=None,
                        help=f"what the viewers speak, e.g. en or fa (default {DEFAULT_CONFIG['language']})")
    parser.add_argument("--engine", default=None, help="puppet (the default) or musetalk (prepares its latents)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        store = open_store(settings)
    except (ConfigError, StoreError) as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2
    meta = {"owner": args.owner, "description": args.description, "tts_model": args.tts_model,
            "timbre": args.timbre, "asr_model": args.asr_model, "language": args.language, "engine": args.engine}
    try:
        registration.lock(store, args.name, f"cli:{os.getpid()}")
        try:
            record = registration.register(settings, store, args.path, args.name, meta)
        finally:
            registration.unlock(store, args.name)
    except registration.RegistrationError as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and not argv[0].startswith("-") else "serve"
    if command == "serve":
        return serve(argv[1:] if argv and argv[0] == "serve" else argv)
    if command == "register":
        return register(argv[1:])
    if command == "doctor":
        from .doctor import main as doctor
        return doctor(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
