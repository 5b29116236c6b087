"""python -m avatar_manager [serve]                     run the API (gunicorn) and the supervisor
python -m avatar_manager doctor                        check this host and explain what to fix
python -m avatar_manager register PATH --name NAME     prepare an avatar from a photo or a video"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .logs import setup_logging
from .settings import ConfigError, Settings
from .store import StoreError, open_store
from .supervisor import Supervisor

GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")


def serve() -> int:
    try:
        settings = Settings.from_env()
        store = open_store(settings)
        store.ping()
    except (ConfigError, StoreError) as exc:
        print(f"avatar_manager: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_dir)
    api = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "avatar_manager.api:create_app()"]
    try:
        Supervisor(settings, store, api).run()
    except SystemExit as exc:
        print(f"avatar_manager: {exc}", file=sys.stderr)
        return 1
    return 0


def register(argv: list[str]) -> int:
    """Prepare and record an avatar; prints its record as JSON. Run by operators, and by the
    supervisor for an upload (--job: the API holds the name's lock, the job gets the outcome)."""
    import argparse
    import json

    from . import registration
    parser = argparse.ArgumentParser(prog="python -m avatar_manager register")
    parser.add_argument("path", type=Path, help="a photo or a video of one face")
    parser.add_argument("--name", required=True)
    parser.add_argument("--owner", default="")
    parser.add_argument("--description", default="")
    parser.add_argument("--tts-model", default=None)
    parser.add_argument("--timbre", default=None)
    parser.add_argument("--engine", default=None, help="puppet (the default) or musetalk (prepares its latents)")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        store = open_store(settings)
    except (ConfigError, StoreError) as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2
    job = store.get_doc("job", args.job) if args.job else None
    try:
        if job is None:
            registration.lock(store, args.name, f"cli:{os.getpid()}")
        try:
            record = registration.register(settings, store, args.path, args.name, owner=args.owner,
                                           description=args.description, tts_model=args.tts_model,
                                           timbre=args.timbre, engine=args.engine)
        finally:
            # Before the outcome is told: whoever hears it may register the name again at once.
            registration.unlock(store, args.name)
            if job is not None:
                shutil.rmtree(args.path.parent, ignore_errors=True)
    except registration.RegistrationError as exc:
        if job is not None:
            registration.finish_job(store, job, error=exc.to_json())
        print(f"register: {exc}", file=sys.stderr)
        return 2
    if job is not None:
        registration.finish_job(store, job, record=record)
    print(json.dumps(record, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "serve"
    if command == "serve":
        return serve()
    if command == "register":
        return register(argv[1:])
    if command == "doctor":
        from .doctor import main as doctor
        return doctor(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
