"""open_store(settings): Redis when REDIS_URL is set, else the SQLite file in AVATAR_DATA_DIR."""
from __future__ import annotations

from ..settings import Settings
from .base import NotFound, Store, StoreError

__all__ = ["NotFound", "Store", "StoreError", "open_store"]


def open_store(settings: Settings) -> Store:
    if settings.redis_url:
        from .redis import RedisStore
        return RedisStore(settings.redis_url)
    from .sqlite import SqliteStore
    return SqliteStore(settings.data_dir / "manager.sqlite3")
