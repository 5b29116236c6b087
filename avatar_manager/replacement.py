"""A host that died: its instances placed again on the other hosts. Run by the fleet's leader.

A host whose lease ran out (by the store's clock) is lost: each of its instances is marked LOST
and then, in one atomic step, placed on a live host with its users and its token (STARTING
there), or FAILED when no host has room. An instance that was being stopped is simply gone.
By then the lost host's workers have ended themselves (fencing, lipsync_worker/fence.py), so
an avatar never runs twice.
"""
from __future__ import annotations

import logging

from . import hosts as fleet_hosts
from .instances import HOLDS_PORT, State
from .lease import host_lease
from .settings import Settings
from .store.base import Store

log = logging.getLogger("avatar_manager.replacement")
FORGET_AFTER = 3600.0   # seconds a lost host stays listed in /status


def place_lost(store: Store, settings: Settings, several_hosts: bool) -> int:
    """Every instance of a host whose lease nobody holds (it ran out, or its agent was shut down),
    and every LOST one wherever it was, placed again on a live host (or FAILED); how many moved.
    With `several_hosts`, records from before hosts ("") count as lost too: any host could have
    run them (on a fleet of one host, its agent runs them)."""
    now = store.clock()
    known = fleet_hosts.all_hosts(store)
    instances = store.list()
    # The lease says whether a host lives; its document (what it offers) may lag by a second.
    ids = ({i.host for i in instances} | {h.id for h in known}) - {""}
    lost = {h for h in ids if store.lease_holder(host_lease(h), now) is None}
    live = [h for h in known if h.live(now) and h.id not in lost]
    if several_hosts:
        lost.add("")
    moved = 0
    for instance in instances:
        if instance.host not in lost and instance.state != State.LOST:
            continue
        if instance.state == State.STOPPING:  # a stop was asked for, and its worker is gone
            if store.transition(instance.avatar, {State.STOPPING}, State.STOPPED, pid=0):
                store.remove(instance.avatar, State.STOPPED)
            continue
        if instance.state in HOLDS_PORT:
            # Still this very placement: a leader acting on an old list must not mark one that
            # was placed again meanwhile.
            store.transition(instance.avatar, {instance.state}, State.LOST,
                             expect={"token": instance.token, "host": instance.host}, pid=0,
                             error=f"its host {instance.host or '(unknown)'} stopped renewing its lease")
        elif instance.state != State.LOST:
            continue  # FAILED: holds nothing, anywhere
        placed = store.place_lost(instance.avatar, instance.token, live, settings.gpu_min_free_mb)
        if placed is not None:
            moved += 1
            if placed.state == State.FAILED:
                log.error("%s: lost with host %s, and %s", placed.avatar, instance.host, placed.error)
            else:
                log.warning("%s: lost with host %s; placed again on %s (port %d)", placed.avatar, instance.host,
                            placed.host, placed.port)
    for host in known:
        if not host.live(now) and now - host.expires > FORGET_AFTER:
            store.delete_doc(fleet_hosts.KIND, host.id)
    return moved
