"""How the services read their settings from the environment: a malformed value stops the service
at start with a one-line reason that names the variable."""
from __future__ import annotations

import re
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def number(env: dict, name: str, default: float, minimum: float, cast=float):
    """A numeric setting from `env`; ConfigError names the variable when it is malformed."""
    raw = env.get(name)
    if raw is None or raw == "":
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def port_range(env: dict, name: str) -> range | None:
    """A range of ports "LOW-HIGH" (both included, within 1024-65535) from `env`; None when unset
    or empty. ConfigError names the variable when it is malformed."""
    raw = env.get(name) or ""
    if not raw.strip():
        return None
    bounds = re.fullmatch(r"(\d+)-(\d+)", raw.strip(), re.ASCII)
    if bounds is None or not 1024 <= int(bounds[1]) <= int(bounds[2]) <= 65535:
        raise ConfigError(f"{name}={raw!r} must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, e.g. 40000-40099")
    return range(int(bounds[1]), int(bounds[2]) + 1)


def switch(env: dict, name: str, default: bool) -> bool:
    """An on/off setting: 1, true, yes, on or 0, false, no, off (any case)."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env.get(name)!r} must be on or off (1/0, true/false, yes/no)")


def url(env: dict, name: str, default: str | None) -> str | None:
    """An http(s) URL setting from `env` without its trailing slash; `default` when unset.
    ConfigError names the variable when it is not such a URL."""
    raw = env.get(name) or default
    if raw is None:
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")
