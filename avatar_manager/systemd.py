"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET ("READY=1", "STOPPING=1")."""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("avatar_manager.systemd")


def notify(message: str) -> bool:
    """Tell systemd (Type=notify) about our state; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True
