"""Leadership: one host agent per store supervises; the lease in the store says which. A leader
renews it every tick; one silent for LEASE_TTL is presumed dead and replaced."""
from __future__ import annotations

import logging
import os
import secrets
import socket

import psutil

from .store.base import Store

log = logging.getLogger("avatar_manager.lease")
LEASE_TTL = 5.0


class Lease:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.held = False

    def hold(self, now: float) -> bool:
        """Take or renew the lease; whether we lead now. StoreError leaves us not leading."""
        leading, self.held = self.held, False
        if not leading:  # a leader holds the lease itself: nothing to look at
            self._free_dead(now)
        self.held = self.store.take_lease(self.holder, LEASE_TTL, now)
        return self.held

    def _free_dead(self, now: float) -> None:
        """A leader on this host whose process is gone (SIGKILLed) need not be waited out."""
        holder = self.store.lease_holder(now)
        if holder is None or holder == self.holder:
            return
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            log.info("the previous supervisor (%s) is gone; taking over now", holder)
            self.store.drop_lease(holder)

    def release(self) -> None:
        self.store.drop_lease(self.holder)
        self.held = False
