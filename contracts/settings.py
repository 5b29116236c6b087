"""How the services read their settings from the environment: a malformed value stops the service
at start with a one-line reason that names the variable."""
from __future__ import annotations


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
