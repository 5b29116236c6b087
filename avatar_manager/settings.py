"""The manager's configuration: environment variables read once into one object and checked,
so a wrong value stops the service at start with a one-line reason."""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from contracts.avatars import data_dir
from contracts.bounds import DEFAULT as DEFAULT_BOUNDS
from contracts.cors import allowed_origins
from contracts.ice import parse_ice_servers
from contracts.limits import MAX_JSON_BYTES
from contracts.ports import ASR_PORTS, AVATAR_BASE_PORT, MANAGER_HOST, MANAGER_PORT, TTS_PORTS
from contracts.settings import ConfigError, number, port_range

from .instances import url_host

__all__ = ["ConfigError", "Settings"]


def _port(env: dict, name: str, default: int) -> int:
    value = number(env, name, default, 1, int)
    if value > 65535:
        raise ConfigError(f"{name}={value} is not a TCP port (1-65535)")
    return value


def _model_ports(env: dict, kind: str, defaults: dict[str, int]) -> dict[str, int]:
    """Model -> its server's port: contracts.ports' table, {KIND}_PORT_{MODEL} overriding it."""
    return {name: _port(env, f"{kind}_PORT_{name.upper()}", port) for name, port in defaults.items()}


def _gpu_ids(raw: str) -> list[int] | None:
    """GPU_IDS="1,0": these GPUs in this order of preference; unset: every GPU NVML reports."""
    if not raw.strip():
        return None
    try:
        ids = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"GPU_IDS={raw!r} must be GPU indexes separated by commas, e.g. 1,0") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"GPU_IDS={raw!r} must list distinct indexes, none negative")
    return ids


def _redis_url(raw: str) -> str | None:
    if not raw:
        return None
    from .store.redis_client import check  # here: the store package imports this module
    try:
        check(raw)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL {exc}") from None
    return raw


def _ice_servers(raw: str) -> list[dict]:
    try:
        return parse_ice_servers(raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str | None:
    """A host name (as it is) or an IP address (parsed, brackets allowed); None when it is neither."""
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return name if _HOSTNAME.fullmatch(name) and len(name) <= 253 else None


def _public_host(raw: str, host: str) -> str:
    """PUBLIC_HOST: the address clients reach this host's workers at, as it goes into a URL (an
    IPv6 address in brackets). Unset: AVATAR_MANAGER_HOST when it names one address, else
    127.0.0.1 (a wildcard bind says nothing about which address clients use)."""
    address = _address(raw.strip() or host)
    if address is None:
        raise ConfigError(f"PUBLIC_HOST={raw!r} must be a host name or an IP address, without a "
                          "scheme, port or path (e.g. avatars.example.com)")
    if isinstance(address, str):
        return address
    if address.is_unspecified:
        if raw.strip():
            raise ConfigError(f"PUBLIC_HOST={raw!r} is a wildcard, not an address clients can reach")
        return "127.0.0.1"
    return url_host(str(address))


_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _host_id(raw: str) -> str:
    """HOST_ID: this host's name in the fleet (the store keys its lease and its instances by it)."""
    name = raw.strip() or socket.gethostname()
    if not _HOST_ID.fullmatch(name):
        raise ConfigError(f"HOST_ID={name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def _host_address(raw: str) -> str:
    """HOST_ADDRESS: where the API processes (and this host's agent) reach its workers, which
    listen there. A host name or an IP address, not a wildcard."""
    address = _address(raw.strip() or "127.0.0.1")
    if address is None:
        raise ConfigError(f"HOST_ADDRESS={raw!r} must be a host name or an IP address")
    if not isinstance(address, str) and address.is_unspecified:
        raise ConfigError(f"HOST_ADDRESS={raw!r} is a wildcard: name the address other hosts reach this one at")
    return str(address)


def _fleet_api_url(raw: str) -> str | None:
    """FLEET_API_URL: the API as this host's agent reaches it, to download the registered avatars
    it does not hold (avatar_sync); unset: none are downloaded (one host, or a shared data dir)."""
    raw = raw.strip()
    if not raw:
        return None
    parts = urlparse(raw)
    try:
        port_ok = parts.port != 0  # urllib raises ValueError for a port that is not 0-65535
    except ValueError:
        port_ok = False
    if (parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query
            or parts.fragment or "@" in parts.netloc):
        raise ConfigError(f"FLEET_API_URL={raw!r} must be http:// or https://, a host, maybe a port and a path, "
                          "without credentials, query or fragment (e.g. http://avatar-api:8607)")
    return raw.rstrip("/")


def _cors_origins(env: dict) -> list[str]:
    try:
        return allowed_origins(env.get("CORS_ORIGINS"), token_set=bool(env.get("API_TOKEN")))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str
    port: int
    public_host: str             # PUBLIC_HOST, URL-ready: where clients reach the workers (webrtc_url)
    host_id: str                 # HOST_ID: this host in the fleet (default: the host name)
    host_address: str            # HOST_ADDRESS: where the API and the agent reach this host's workers
    base_port: int
    max_avatars: int
    log_dir: Path
    log_retention_days: float    # instance logs older than this go (a running one's and each avatar's newest stay)
    redis_url: str | None
    gpu_ids: list[int] | None
    gpu_min_free_mb: int
    idle_timeout: float          # seconds an instance with no connections stays warm
    health_check_interval: float
    health_check_misses: int     # checks in a row a worker may miss before it is killed and restarted
    startup_timeout: float       # seconds a worker has to answer /health with its token
    stop_timeout: float          # grace between SIGTERM and SIGKILL
    stale_timeout: float         # connections with no live session this long were forgotten
    api_token: str | None
    cors_origins: list[str]      # the browser origins allowed to call us and our workers; ["*"]: any
    max_body_bytes: int
    worker_module: str           # the lip-sync worker program, run as `python -m MODULE`
    tts_ports: dict[str, int]    # TTS model -> its server's port (TTS_PORT_<MODEL> overrides)
    asr_ports: dict[str, int]    # ASR model -> its server's port (ASR_PORT_<MODEL> overrides)
    max_avatar_file_bytes: int   # uploads for registration (MAX_AVATAR_FILE_SIZE, in MB)
    register_timeout: float      # a registration still running after this is killed
    register_wait: float         # POST /avatar/register answers with the result within this, else 202
    register_workers: int        # registrations prepared at once (REGISTER_WORKERS), each a process of its own
    register_queue: int          # more waiting their turn (REGISTER_QUEUE); past that a 429
    max_image_pixels: int        # a photo or one video frame (MAX_IMAGE_PIXELS), checked before decoding
    max_video_pixels: int        # pixels decoded from a video's first 10 s (MAX_VIDEO_PIXELS)
    register_memory_mb: int      # address space decoding an upload may add (REGISTER_MEMORY_MB); 0: unbounded
    ice_servers: list[dict]      # ICE_SERVERS, for the web console (workers read the same variable)
    chat: bool                   # LLM_URL is set, so workers (who inherit it) answer type "chat"
    connect_timeout: float       # WEBRTC_CONNECT_TIMEOUT: a worker drops a peer not connected by then
    fleet_api_url: str | None    # FLEET_API_URL: where this host downloads registered avatars from

    @property
    def ports(self) -> range:
        return range(self.base_port, self.base_port + self.max_avatars)

    @property
    def api_url(self) -> str:
        """Where this host reaches the API (a wildcard bind is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def avatars_dir(self) -> Path:
        return self.data_dir / "avatars"

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        # Only the workers use WEBRTC_PORT_RANGE (they inherit our environment); checked here so
        # that a typo stops the service at start rather than each worker it spawns.
        port_range(env, "WEBRTC_PORT_RANGE")
        settings = cls(
            data_dir=data_dir(env).resolve(),
            host=env.get("AVATAR_MANAGER_HOST") or MANAGER_HOST,
            port=_port(env, "AVATAR_MANAGER_PORT", MANAGER_PORT),
            # HOST_ADDRESS first: PUBLIC_HOST defaults to it, and a bad one is named as itself.
            host_address=_host_address(env.get("HOST_ADDRESS", "")),
            public_host=_public_host(env.get("PUBLIC_HOST", ""), env.get("HOST_ADDRESS")
                                     or env.get("AVATAR_MANAGER_HOST") or MANAGER_HOST),
            host_id=_host_id(env.get("HOST_ID", "")),
            base_port=_port(env, "AVATAR_BASE_PORT", AVATAR_BASE_PORT),
            max_avatars=number(env, "MAX_AVATARS", 10, 1, int),
            log_dir=Path(env.get("LOG_DIR") or "logs").resolve(),
            log_retention_days=number(env, "LOG_RETENTION_DAYS", 7.0, 0.0),
            redis_url=_redis_url(env.get("REDIS_URL", "")),
            gpu_ids=_gpu_ids(env.get("GPU_IDS", "")),
            gpu_min_free_mb=number(env, "GPU_MIN_FREE_MB", 6000, 0, int),
            idle_timeout=number(env, "IDLE_TIMEOUT", 300.0, 0.0),
            health_check_interval=number(env, "HEALTH_CHECK_INTERVAL", 5.0, 0.1),
            health_check_misses=number(env, "HEALTH_CHECK_MISSES", 3, 1, int),
            # 30: a whole start (fleet.Fleet.start_wait: 30 + 2 x STOP_TIMEOUT + 5) ends before the
            # 60 s the existing backend waits, so a slow one fails here, with its reason.
            startup_timeout=number(env, "STARTUP_TIMEOUT", 30.0, 1.0),
            stop_timeout=number(env, "STOP_TIMEOUT", 10.0, 0.1),
            stale_timeout=number(env, "STALE_CONNECTION_TIMEOUT", 900.0, 1.0),
            api_token=env.get("API_TOKEN") or None,
            cors_origins=_cors_origins(env),
            max_body_bytes=number(env, "MAX_JSON_BYTES", MAX_JSON_BYTES, 256, int),
            worker_module=env.get("WORKER_MODULE") or "lipsync_worker",
            tts_ports=_model_ports(env, "TTS", TTS_PORTS),
            asr_ports=_model_ports(env, "ASR", ASR_PORTS),
            max_avatar_file_bytes=int(number(env, "MAX_AVATAR_FILE_SIZE", 50.0, 0.001) * 1024 * 1024),
            register_timeout=number(env, "REGISTER_TIMEOUT", 300.0, 1.0),
            register_wait=number(env, "REGISTER_WAIT", 60.0, 0.0),
            register_workers=number(env, "REGISTER_WORKERS", 2, 1, int),
            register_queue=number(env, "REGISTER_QUEUE", 8, 0, int),
            max_image_pixels=number(env, "MAX_IMAGE_PIXELS", DEFAULT_BOUNDS.max_pixels, 1, int),
            max_video_pixels=number(env, "MAX_VIDEO_PIXELS", DEFAULT_BOUNDS.max_video_pixels, 1, int),
            register_memory_mb=number(env, "REGISTER_MEMORY_MB", DEFAULT_BOUNDS.memory_mb, 0, int),
            ice_servers=_ice_servers(env.get("ICE_SERVERS", "")),
            chat=bool(env.get("LLM_URL")),
            connect_timeout=number(env, "WEBRTC_CONNECT_TIMEOUT", 30.0, 1.0),
            fleet_api_url=_fleet_api_url(env.get("FLEET_API_URL", "")),
        )
        if settings.base_port + settings.max_avatars - 1 > 65535:
            raise ConfigError(f"AVATAR_BASE_PORT={settings.base_port} + MAX_AVATARS={settings.max_avatars} "
                              "runs past port 65535")
        if settings.base_port <= settings.port < settings.base_port + settings.max_avatars:
            raise ConfigError(f"AVATAR_MANAGER_PORT={settings.port} lies inside the avatar port range "
                              f"{settings.base_port}-{settings.base_port + settings.max_avatars - 1}")
        if not all(c.isidentifier() for c in settings.worker_module.split(".")):
            raise ConfigError(f"WORKER_MODULE={settings.worker_module!r} is not a Python module name")
        return settings
