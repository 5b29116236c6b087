"""What every worker route shares: bounded body reading, errors as {"code": -1, "msg"} with a 4xx,
the API token where one is set, and one log line per request."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy

from contracts import auth
from contracts.limits import MAX_JSON_BYTES
from contracts.openapi import load
from contracts.worker_api import DIGITS

log = logging.getLogger("lipsync_worker.http")

BODY = "body"                       # request key: the parsed JSON body or form, read once
QUIET_PATHS = ("/health", "/metrics")   # probed every few seconds: logged at DEBUG when they succeed
# A body that stops arriving gets 408. aiohttp never ends the body of a request whose chunked
# encoding turns bad midway (its parser fails, the handler's read waits on), so without these a
# malformed request would hold its handler until the client hangs up.
STALL_SECONDS = 10.0        # between two pieces of a JSON body
FORM_SECONDS = 120.0        # for a whole upload form (20 MB at 1.4 Mbit/s)


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def checked(schema: type, data: object) -> dict:
    """A body, form or query as its schema reads it; 400 with the schema's reason when it does not."""
    try:
        return load(schema(), data)
    except ValueError as exc:
        raise ClientError(400, str(exc)) from None


async def read_json(request: web.Request) -> object:
    """The JSON body, at most MAX_JSON_BYTES however it is sent (chunked bodies too); kept on
    the request for the access log."""
    if BODY in request:
        return request[BODY]
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise ClientError(413, f"body larger than {MAX_JSON_BYTES} bytes")
    data = bytearray()
    try:
        while len(data) <= MAX_JSON_BYTES:
            piece = await asyncio.wait_for(request.content.read(MAX_JSON_BYTES + 1 - len(data)), STALL_SECONDS)
            if not piece:
                break
            data += piece
    except HttpProcessingError as exc:  # a malformed chunked body
        raise ClientError(400, f"the body could not be read: {exc.message}") from None
    except asyncio.TimeoutError:
        raise ClientError(408, f"the body stopped arriving for {STALL_SECONDS:.0f} s") from None
    if len(data) > MAX_JSON_BYTES:
        raise ClientError(413, f"body larger than {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(data)
    except ValueError:
        raise ClientError(400, "the body must be a JSON object") from None
    except RecursionError:
        raise ClientError(400, "the body is nested too deeply") from None
    request[BODY] = body
    return body


async def read_form(request: web.Request) -> MultiDictProxy:
    """The multipart (or urlencoded) form, at most the application's client_max_size."""
    if BODY not in request:
        try:
            request[BODY] = await asyncio.wait_for(request.post(), FORM_SECONDS)
        except (ValueError, HttpProcessingError) as exc:
            raise ClientError(400, f"expected multipart form data: {exc}") from None
        except asyncio.TimeoutError:
            raise ClientError(408, f"the form did not arrive within {FORM_SECONDS:.0f} s") from None
    return request[BODY]


def _session_of(request: web.Request) -> str:
    """The session a request names, for the log: a number or "-" (never raw client text)."""
    body = request.get(BODY)
    raw = body.get("sessionid") if hasattr(body, "get") else request.query.get("sessionid")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, str) and DIGITS.fullmatch(raw.strip()):
        return raw.strip()
    return "-"


@web.middleware
async def access_log(request: web.Request, handler):
    """METHOD PATH STATUS session=N MS ms, once the handler is done (an /sse line when its stream ends)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        level = logging.DEBUG if request.path in QUIET_PATHS and status < 400 else logging.INFO
        # raw_path: percent-encoded, so a client cannot put a line break into the log.
        log.log(level, "%s %s %d session=%s %.1f ms", request.method, request.rel_url.raw_path, status,
                _session_of(request), 1000 * (time.perf_counter() - started))


@web.middleware
async def errors(request: web.Request, handler):
    """Client mistakes as {"code": -1, "msg": ...} with their 4xx status."""
    try:
        return await handler(request)
    except ClientError as exc:
        return web.json_response({"code": -1, "msg": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"code": -1, "msg": exc.text or exc.reason}, status=exc.status, headers=allow)


def require_token(token: str | None, open_paths: tuple[str, ...]):
    """401 {"code": -1, "msg"} for a request without the token, on every path but `open_paths`."""
    return auth.middleware(token, open_paths, lambda message: web.json_response({"code": -1, "msg": message},
                                                                                status=401))
