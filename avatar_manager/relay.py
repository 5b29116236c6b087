"""The manager relays an instance's signalling (LiveTalking's /offer, /human, ...), so a browser
needs only the manager's port for it; the media itself still flows between browser and worker.
The worker's answer comes back as it is: status, body and all. Its event stream (/sse) and its
recordings (/record/<sessionid>) are streamed through. Where API_TOKEN is set the workers require
it, and the relay sends it (the client has shown it to the manager already)."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import requests

from contracts import auth
from contracts.limits import MAX_FORM_BYTES, MAX_JSON_BYTES

from .instances import Instance, State

# An /offer waits for the worker's ICE gathering and its first encoder set-up; the rest are instant.
TIMEOUT = (2.0, 30.0)
# A stream is read until the worker says nothing for this long; its event stream says
# ": keep-alive" every 15 s, so only a stuck worker stays silent this long.
STREAM_TIMEOUT = (2.0, 40.0)
STREAM_CHUNK = 64 * 1024
# Each relayed stream holds one of gunicorn's threads (32 per process by default) for its whole
# life; at most this many per API process, so plain requests always find a thread.
MAX_STREAMS = 16


class RelayError(Exception):
    """The request could not reach a worker: `status` is what the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str

    def sessionid(self) -> int | None:
        """The session an accepted /offer opened."""
        if self.status != 200:
            return None
        try:
            sessionid = json.loads(self.body).get("sessionid")
        except (ValueError, AttributeError):
            return None
        return sessionid if isinstance(sessionid, int) and not isinstance(sessionid, bool) else None


def body_limit(path: str) -> int:
    return MAX_FORM_BYTES if path == "humanaudio" else MAX_JSON_BYTES


def _worker_url(instance: Instance, path: str) -> str:
    if instance.state != State.RUNNING:
        why = f": {instance.error.splitlines()[0]}" if instance.error else ""
        raise RelayError(503, f"avatar {instance.avatar} is {instance.state.value}, not RUNNING{why}")
    return f"{instance.url}/{path}"


def _unreachable(instance: Instance, path: str, exc: requests.RequestException, timeout: float) -> RelayError:
    if isinstance(exc, requests.Timeout):
        return RelayError(504, f"the worker of avatar {instance.avatar} (port {instance.port}) did not answer "
                               f"/{path} within {timeout:g} s")
    return RelayError(502, f"could not reach the worker of avatar {instance.avatar} on port {instance.port}: "
                           f"{type(exc).__name__}")


def forward(instance: Instance, path: str, body: bytes, content_type: str, api_token: str | None) -> Answer:
    """POST the body to the instance's worker, which must be RUNNING."""
    url = _worker_url(instance, path)
    try:
        response = requests.post(url, data=body, headers={"Content-Type": content_type, **auth.headers(api_token)},
                                 timeout=TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        raise _unreachable(instance, path, exc, TIMEOUT[1]) from None
    return Answer(response.status_code, response.content, response.headers.get("Content-Type", "application/json"))


class Streams:
    """The relayed streams of this process, bounded by MAX_STREAMS."""

    def __init__(self, api_token: str | None, limit: int = MAX_STREAMS) -> None:
        self._free = threading.BoundedSemaphore(limit)
        self.limit = limit
        self._headers = auth.headers(api_token)

    def open(self, instance: Instance, path: str, params: dict[str, str]) -> "Stream":
        """GET the worker's path as a stream; RelayError 503 when MAX_STREAMS are open already."""
        url = _worker_url(instance, path)
        if not self._free.acquire(blocking=False):
            raise RelayError(503, f"this manager process relays {self.limit} streams already; try again later")
        try:
            response = requests.get(url, params=params, headers=self._headers, stream=True, timeout=STREAM_TIMEOUT,
                                    allow_redirects=False)
        except requests.RequestException as exc:
            self._free.release()
            raise _unreachable(instance, path, exc, STREAM_TIMEOUT[1]) from None
        return Stream(response, self._free)


class Stream:
    """One worker response being passed on; close() (always called, once or more) frees its slot."""

    def __init__(self, response: requests.Response, slot: threading.BoundedSemaphore) -> None:
        self.response = response
        self._slot = slot
        self._lock = threading.Lock()
        self._closed = False

    def chunks(self):
        """The body as it arrives; it ends when the worker ends it, goes silent, or goes away."""
        try:
            yield from self.response.iter_content(chunk_size=STREAM_CHUNK)
        except requests.RequestException:
            return

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.response.close()
        self._slot.release()
