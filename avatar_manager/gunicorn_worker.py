"""gunicorn's gevent worker, with a bound on how long a request body may take to arrive.

gunicorn's gevent worker bounds the wait for a request's head (`keepalive` seconds, idle or
trickling) but not the body: a client that sends a Content-Length and then nothing would hold its
greenlet and its connection forever. Here each read of the body (and each write of the answer)
waits at most REQUEST_BODY_TIMEOUT seconds for the socket; then the client gets a 408 and the
connection is closed. A malformed chunked body is a 400 rather than a 500, and after either the
connection is closed, as what is left of the body cannot be told from the next request.
"""
from __future__ import annotations

import os
import socket

import gevent
from gunicorn.http.errors import ParseException
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import BadRequest, RequestTimeout



def _body_timeout() -> float:
    """REQUEST_BODY_TIMEOUT, checked here: gunicorn's master imports this module before it forks,
    so a bad value stops the API at start with this line. (Nothing of the app is imported: it
    must come after gevent's patching, which happens in each worker.)"""
    raw = os.environ.get("REQUEST_BODY_TIMEOUT") or "30"
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0.1 <= value < float("inf"):
        raise SystemExit(f"REQUEST_BODY_TIMEOUT={raw!r} must be a number of seconds, at least 0.1")
    return value


# Between two pieces of a body (nginx's client_body_timeout is 60 s): generous for a slow upload,
# which keeps sending, and short enough that a stalled client frees its connection soon.
BODY_TIMEOUT = _body_timeout()


class _Body:
    """A request's body as gunicorn reads it, failing with the HTTP error the client caused."""

    def __init__(self, body, request) -> None:
        self._body = body
        self._request = request

    def _guard(self, read, *args):
        try:
            return read(*args)
        except TimeoutError:
            self._request.must_close = True
            raise RequestTimeout(f"the request body stopped arriving: nothing came for "
                                 f"REQUEST_BODY_TIMEOUT={BODY_TIMEOUT:g} s") from None
        except ParseException as exc:
            self._request.must_close = True
            raise BadRequest(f"malformed request body: {exc}") from None

    def read(self, size=None):
        return self._guard(self._body.read, size)

    def readline(self, size=None):
        return self._guard(self._body.readline, size)

    def readlines(self, size=None):
        return self._guard(self._body.readlines, size)

    def __iter__(self):
        return self

    def __next__(self):
        return self._guard(self._body.__next__)


class Worker(GeventWorker):
    def handle_request(self, listener_name, req, sock: socket.socket, addr):
        req.body = _Body(req.body, req)
        sock.settimeout(BODY_TIMEOUT)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            # Between requests the keep-alive wait is bounded by gunicorn's `keepalive` instead.
            sock.settimeout(None)
            # A client whose next request is already here would be served again at once, ahead of
            # every other connection: let them have their turn first.
            gevent.sleep(0)
