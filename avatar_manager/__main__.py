"""python -m avatar_manager [serve]   run the API (gunicorn) and the supervisor, until SIGTERM
python -m avatar_manager doctor      check this host and explain what to fix"""
from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "serve"
    if command == "serve":
        return serve()
    if command == "doctor":
        from .doctor import main as doctor
        return doctor(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
