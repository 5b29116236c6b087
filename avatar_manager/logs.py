"""Logging: the supervisor is the one writer of LOG_DIR/manager.log (rotated by size); the API
processes log to stderr, which the supervisor pumps into the same file."""
from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from pathlib import Path
from typing import IO

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class _Formatter(logging.Formatter):
    """Lines pumped from a child are formatted already; everything else gets a timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "raw", False):
            return record.getMessage()
        return super().format(record)


def setup_logging(log_dir: Path | None) -> None:
    """stderr always; plus the rotated manager.log when log_dir is given (the supervisor's)."""
    root = logging.getLogger()
    if any(getattr(h, "_avatar_manager", False) for h in root.handlers):
        return
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(log_dir / "manager.log", maxBytes=MAX_BYTES,
                                                             backupCount=BACKUPS))
    for handler in handlers:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._avatar_manager = True
        root.addHandler(handler)


def pump(stream: IO[bytes], name: str) -> threading.Thread:
    """Copy a child's output, line by line, into our log."""
    out = logging.getLogger(name)

    def copy() -> None:
        with stream:
            for line in iter(stream.readline, b""):
                out.info(line.decode("utf-8", "replace").rstrip("\n"), extra={"raw": True})

    thread = threading.Thread(target=copy, name=f"pump-{name}", daemon=True)
    thread.start()
    return thread
