"""Leases in the store, judged by the store's clock: the fleet's leader (who runs the fleet-wide
duties: registration jobs, placing a lost host's instances again) and each host (which agent
supervises that host's instances). A holder renews every tick; one silent for the TTL is
presumed dead and replaced."""
from __future__ import annotations

import logging
import os
import secrets
import socket
from pathlib import Path

from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:  # the store's package reads hosts.py, which reads TTL here
    from .store.base import Store

log = logging.getLogger("avatar_manager.lease")
TTL = 5.0
FLEET = "fleet"


def host_lease(host_id: str) -> str:
    return f"host:{host_id}"


def _boot() -> str:
    """This machine's current boot (host names repeat across cloned machines; this does not)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "unknown"


def holder_id() -> str:
    """This process, as a lease names its holder: host name, pid, this machine's boot, and a
    nonce against pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{_boot()}:{secrets.token_hex(4)}"


class Lease:
    def __init__(self, store: "Store", name: str, holder: str) -> None:
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
        """A holder on this machine (this very boot of it) whose process is gone (SIGKILLed) need
        not be waited out."""
        holder = self.store.lease_holder(self.name)
        if holder is None or holder == self.holder:
            return
        _, pid, boot, _ = (holder.split(":") + ["", "", "", ""])[:4]
        if boot == _boot() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            log.info("the previous holder of the %s lease (%s) is gone; taking over now", self.name, holder)
            self.store.drop_lease(self.name, holder)

    def release(self) -> None:
        self.held = False
        self.store.drop_lease(self.name, self.holder)
