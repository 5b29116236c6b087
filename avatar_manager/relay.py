"""The manager relays an instance's signalling (LiveTalking's /offer, /human, ...), so a browser
needs only the manager's port for it; the media itself still flows between browser and worker.
The worker's answer comes back as it is: status, body and all."""
from __future__ import annotations

from dataclasses import dataclass

import requests

from lipsync_worker.limits import MAX_FORM_BYTES, MAX_JSON_BYTES

from .instances import Instance, State

RELAYED = ("offer", "human", "humanaudio", "interrupt_talk", "is_speaking")
# An /offer waits for the worker's ICE gathering and its first encoder set-up; the rest are instant.
TIMEOUT = (2.0, 30.0)


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


def body_limit(path: str) -> int:
    return MAX_FORM_BYTES if path == "humanaudio" else MAX_JSON_BYTES


def forward(instance: Instance, path: str, body: bytes, content_type: str) -> Answer:
    """POST the body to the instance's worker, which must be RUNNING."""
    if instance.state != State.RUNNING:
        why = f": {instance.error.splitlines()[0]}" if instance.error else ""
        raise RelayError(503, f"avatar {instance.avatar} is {instance.state.value}, not RUNNING{why}")
    url = f"http://127.0.0.1:{instance.port}/{path}"
    try:
        response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=TIMEOUT,
                                 allow_redirects=False)
    except requests.Timeout:
        raise RelayError(504, f"the worker of avatar {instance.avatar} (port {instance.port}) did not answer "
                              f"/{path} within {TIMEOUT[1]:g} s") from None
    except requests.RequestException as exc:
        raise RelayError(502, f"could not reach the worker of avatar {instance.avatar} on port "
                              f"{instance.port}: {type(exc).__name__}") from None
    return Answer(response.status_code, response.content, response.headers.get("Content-Type", "application/json"))
