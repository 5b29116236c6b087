"""A WebRTC session opened through the relay holds one connection of its instance while it lives.

The relay's /offer joins (or starts) the avatar's instance and records the session it opened: a
store document with the avatar, the instance's token, the worker's pid and the session id. The
supervisor, at each health check of a running instance, asks its worker about each of them and
gives back the connection of every session that is gone (closed, failed or expired at the worker,
or a worker process that is not the one that opened it). So a LiveTalking client pointed at the
relay needs no /avatar/start and no /avatar/disconnect.
"""
from __future__ import annotations

import time
from typing import Callable

import requests

from contracts import auth

from .instances import Instance
from .store.base import NotFound, Store

KIND = "relayed_session"
ASK_TIMEOUT = (1.0, 2.0)


def _key(avatar: str, token: str, sessionid: int) -> str:
    return f"{avatar}:{token}:{sessionid}"


def hold(store: Store, instance: Instance, sessionid: int) -> None:
    """The session now holds the connection its offer took."""
    store.put_doc(KIND, _key(instance.avatar, instance.token, sessionid),
                  {"avatar": instance.avatar, "token": instance.token, "pid": instance.pid,
                   "sessionid": sessionid, "since": time.time()})


def release(store: Store, avatar: str, token: str) -> None:
    """Give one connection back to that instance (and to no later instance of the avatar)."""
    try:
        store.disconnect(avatar, time.time(), token=token)
    except NotFound:
        pass  # the instance is gone, and its connections with it


def release_gone(store: Store, instance: Instance, alive: Callable[[int], bool | None]) -> int:
    """Release the connection of each relayed session of this avatar that is gone; how many.
    alive(sessionid): True, False, or None when the worker cannot say (kept)."""
    released = 0
    for doc in store.list_docs(KIND):
        if doc["avatar"] != instance.avatar:
            continue
        gone = (doc["token"] != instance.token or doc["pid"] != instance.pid
                or alive(doc["sessionid"]) is False)
        # Deleting first makes the release happen once, whoever else looks at the same document.
        if gone and store.delete_doc(KIND, _key(doc["avatar"], doc["token"], doc["sessionid"])):
            release(store, doc["avatar"], doc["token"])
            released += 1
    return released


def forget_stale(store: Store, instances: list[Instance]) -> int:
    """Delete the documents of sessions whose instance is gone (stopped, failed, deleted, or
    replaced by a later one): they hold no connection any more, and nothing else would find them."""
    current = {(i.avatar, i.token) for i in instances}
    forgotten = 0
    for doc in store.list_docs(KIND):
        if (doc["avatar"], doc["token"]) not in current:
            forgotten += store.delete_doc(KIND, _key(doc["avatar"], doc["token"], doc["sessionid"]))
    return forgotten


def worker_has_session(url: str, sessionid: int, api_token: str | None) -> bool | None:
    """Whether the worker still has the session: its /is_speaking answers 404 once it is gone."""
    try:
        response = requests.post(f"{url}/is_speaking", json={"sessionid": sessionid},
                                 headers=auth.headers(api_token), timeout=ASK_TIMEOUT, allow_redirects=False)
    except requests.RequestException:
        return None
    if response.status_code == 404:
        return False
    return True if response.status_code == 200 else None
