"""The error answer of the TTS and ASR servers: `{"status": "error", "message": "..."}` with a 4xx
or 5xx status, for their own refusals and for aiohttp's (unknown path, wrong method, body too
large) alike."""
from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, fields


class ErrorSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["error"]})
    message = fields.String(required=True, metadata={"description": "What was wrong, and what is allowed."})


def error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


def json_errors(too_large: str):
    """An aiohttp middleware that answers aiohttp's own 4xx and 5xx in the error format above;
    `too_large` is the message of a 413 (the body limit, in the service's words)."""

    @web.middleware
    async def answer_in_json(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error(exc.status, too_large if exc.status == 413 else exc.reason)
            if "Allow" in exc.headers:  # a 405 says which methods the path has
                response.headers["Allow"] = exc.headers["Allow"]
            return response

    return answer_in_json
