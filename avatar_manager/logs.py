"""Logging: the supervisor is the one writer of LOG_DIR/manager.log (rotated by size); the API
processes log to stderr, which the supervisor pumps into the same file. Each instance's worker
writes its own LOG_DIR/avatar_<id>_<port>.log; old ones are pruned (LOG_RETENTION_DAYS)."""
from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import threading
import time
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


INSTANCE_LOGS = "avatar_*.log"   # workers.log_path: one per instance, named by its id and port
_AVATAR_FLAG = re.compile(rb"--avatar_id=(\S+)")


def _avatar_of(path: Path) -> bytes:
    """The avatar an instance log belongs to, from the command line procs.spawn writes first."""
    try:
        with open(path, "rb") as f:
            found = _AVATAR_FLAG.search(f.read(4096))
    except OSError:
        return b""
    return found.group(1) if found else b""


def prune_instance_logs(log_dir: Path, keep: set[Path], days: float, now: float | None = None) -> list[Path]:
    """Delete the instance logs (and their rotated `.1`) last written more than `days` ago, except
    those in `keep` (the store's instances: a worker that runs, however quiet) and each avatar's
    newest log, left for troubleshooting an avatar that has not run for a while. Returns what went."""
    now = time.time() if now is None else now
    logs = []
    for path in log_dir.glob(INSTANCE_LOGS):
        try:
            logs.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    newest: dict[bytes, Path] = {}
    for _, path in sorted(logs):
        newest[_avatar_of(path)] = path
    removed = []
    for mtime, path in logs:
        if path in keep or path in newest.values() or now - mtime < days * 86400:
            continue
        for old in (path, path.with_name(path.name + ".1")):
            try:
                old.unlink()
                removed.append(old)
            except FileNotFoundError:
                pass
    if removed:
        logging.getLogger("avatar_manager.logs").info("removed %d instance log(s) older than LOG_RETENTION_DAYS=%g",
                                                      len(removed), days)
    return removed
