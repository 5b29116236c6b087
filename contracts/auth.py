"""The bearer token that guards the services the manager starts: its workers and TTS servers.

The manager hands its children its API_TOKEN in their environment. With it set, every route but a
service's open ones (/health, pages, /openapi.json) wants `Authorization: Bearer <token>`; the
manager's relay and health probes and a worker's TTS client send it. Without API_TOKEN every route
stays open, as in LiveTalking.
"""
from __future__ import annotations

import hmac
from typing import Callable, Iterable, Mapping

from aiohttp import web

ENV = "API_TOKEN"
REFUSAL = "missing or wrong API token (Authorization: Bearer ...)"
SCHEME_NAME = "token"
METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def token_from(env: Mapping[str, str]) -> str | None:
    """The token a service was given, None when it runs open."""
    return env.get(ENV) or None


def headers(token: str | None) -> dict[str, str]:
    """The headers that authenticate a request to a service guarded by `token` (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def authorized(authorization: str | None, token: str | None) -> bool:
    """Whether an Authorization header carries the token; always so when there is no token.
    Compared in constant time, so the answer's timing tells nothing about a guess."""
    if not token:
        return True
    # surrogateescape: aiohttp decodes header bytes that are not UTF-8 that way.
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def middleware(token: str | None, open_paths: Iterable[str], refuse: Callable[[str], web.Response]):
    """An aiohttp middleware that answers refuse(REFUSAL) (a 401 in the service's error format) to a
    request without the token. Open paths and CORS preflights (OPTIONS: browsers never send
    credentials on them) pass; without a token everything passes."""
    open_paths = frozenset(open_paths)

    @web.middleware
    async def require_token(request: web.Request, handler):
        if (token and request.method != "OPTIONS" and request.path not in open_paths
                and not authorized(request.headers.get("Authorization"), token)):
            response = refuse(REFUSAL)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return require_token


def document(spec: dict, open_paths: Iterable[str], refusal: dict) -> dict:
    """An OpenAPI document made to say the token: the bearer scheme, and on every operation of a
    guarded path its security and the 401 answer `refusal` (a response object)."""
    open_paths = frozenset(open_paths)
    spec.setdefault("components", {})["securitySchemes"] = {SCHEME_NAME: {"type": "http", "scheme": "bearer"}}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            if path in open_paths:
                operation["security"] = []
            else:
                operation["security"] = [{SCHEME_NAME: []}]
                operation.setdefault("responses", {})["401"] = refusal
    return spec
