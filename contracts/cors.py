"""Which web origins may call a service from a browser: one rule for the manager and its workers.

CORS_ORIGINS is a comma-separated list of origins (`https://app.example.com`), `*` for any, or
`none`. Unset or empty, it is `*` while no API_TOKEN protects the service (LiveTalking's pages
are served from anywhere and call the worker directly) and no origin once a token is set, since
a page that may call us must then be named.
"""
from __future__ import annotations

ANY = "*"
NONE = "none"


def allowed_origins(raw: str | None, token_set: bool) -> list[str]:
    """The origins a browser may call from; ["*"] for any, [] for none."""
    origins = [part.strip().rstrip("/") for part in (raw or "").split(",") if part.strip()]
    if not origins:
        return [] if token_set else [ANY]
    if NONE in (o.lower() for o in origins):
        if len(origins) > 1:
            raise ValueError(f"CORS_ORIGINS={raw!r}: 'none' cannot be listed with origins")
        return []
    if ANY in origins:
        return [ANY]
    for origin in origins:
        if "://" not in origin:
            raise ValueError(f"CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com")
    return origins


def as_setting(origins: list[str]) -> str:
    """The value of CORS_ORIGINS that gives exactly these origins (for a worker's environment)."""
    return ",".join(origins) if origins else NONE
