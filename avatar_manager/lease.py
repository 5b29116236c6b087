"""Leases in the store, judged by the store's clock: the fleet's leader (who runs the fleet-wide
duties: registration jobs, placing a lost host's instances again) and each host (which agent
supervises that host's instances). A holder renews every tick; one silent for the TTL is
presumed dead and replaced."""
from __future__ import annotations

import logging
import os
import secrets
import socket

import psutil

from .store.base import Store

log = logging.getLogger("avatar_manager.lease")
TTL = 5.0
FLEET = "fleet"


def host_lease(host_id: str) -> str:
    return f"host:{host_id}"


def holder_id() -> str:
    """This process, as a lease names its holder: host name, pid, and a nonce against pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    def __init__(self, store: Store, name: str, holder: str) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.held = False

    def hold(self) -> bool:
        """Take or renew the lease; whether we hold it now. A StoreError leaves it not held."""
        holding, self.held = self.held, False
        if not holding:  # a holder renews its own lease: nothing to look at
            self._free_dead()
        self.held = self.store.take_lease(self.name, self.holder, TTL)
        return self.held

    def _free_dead(self) -> None:
        """A holder on this machine whose process is gone (SIGKILLed) need not be waited out."""
        holder = self.store.lease_holder(self.name)
        if holder is None or holder == self.holder:
            return
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            log.info("the previous holder of the %s lease (%s) is gone; taking over now", self.name, holder)
            self.store.drop_lease(self.name, holder)

    def release(self) -> None:
        self.held = False
        self.store.drop_lease(self.name, self.holder)
