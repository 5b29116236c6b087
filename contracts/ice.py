"""STUN/TURN servers for WebRTC, from ICE_SERVERS. The workers use them for their own candidates;
the manager hands the same list to the web console, so a browser behind a firewall can relay too."""
from __future__ import annotations

import json


def parse_ice_servers(raw: str) -> list[dict]:
    """ICE_SERVERS='[{"urls": "turn:host:3478", "username": "u", "credential": "p"}]' -> the list;
    ValueError naming the mistake. Empty: no servers (host candidates only)."""
    if not raw.strip():
        return []
    try:
        servers = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"ICE_SERVERS is not JSON: {exc}") from None
    if not isinstance(servers, list):
        raise ValueError("ICE_SERVERS must be a JSON list of {urls, username?, credential?}")
    for server in servers:
        urls = server.get("urls") if isinstance(server, dict) else None
        if not (isinstance(urls, str) or (isinstance(urls, list) and urls and all(isinstance(u, str) for u in urls))):
            raise ValueError(f"ICE_SERVERS entry {server!r} needs urls: a string or a list of strings")
        if any(not isinstance(server.get(k, ""), str) for k in ("username", "credential")):
            raise ValueError(f"ICE_SERVERS entry {server!r}: username and credential must be strings")
    return [{k: s[k] for k in ("urls", "username", "credential") if k in s} for s in servers]
