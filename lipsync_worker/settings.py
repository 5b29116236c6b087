"""Worker configuration: LiveTalking's command-line flags plus environment variables."""
from __future__ import annotations

import argparse
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiortc import RTCIceServer

from contracts.asr_models import DEFAULT_LANGUAGE, DEFAULT_MODEL as DEFAULT_ASR_MODEL, check_language
from contracts.auth import token_from
from contracts.avatars import data_dir
from contracts.cors import allowed_origins
from contracts.ice import parse_ice_servers
from contracts.musetalk_weights import models_dir
from contracts.ports import ASR_PORTS, WORKER_PORT
from contracts.settings import number, port_range, switch

from .vad import VadSettings

log = logging.getLogger("lipsync_worker")


@dataclass(frozen=True)
class WorkerSettings:
    avatar_name: str              # the avatar this worker serves (LiveTalking's --avatar_id)
    model: str
    max_session: int
    host: str
    port: int
    tts: str
    tts_server: str | None
    voice: str | None
    batch_size: int
    instance_token: str
    data_dir: Path
    models_dir: Path
    ice_servers: list[RTCIceServer]
    webrtc_ports: range | None    # WEBRTC_PORT_RANGE: the UDP ports of our ICE host candidates; None: any
    connect_timeout: float        # a peer still not connected after this is dropped
    max_connecting_per_client: int    # offers from one address not connected yet; one more gets 429
    max_text_chars: int
    max_queued_speech_seconds: float  # a session's speech still to say; a /human or /humanaudio past it gets 429
    max_audio_seconds: float      # a /humanaudio file longer than this gets 413, decoding stops there
    llm_url: str | None
    llm_model: str
    llm_api_key: str
    llm_system_prompt: str
    record_max_seconds: float     # /record: a recording ends at this length ...
    record_max_bytes: int         # ... or this size,
    record_retention_seconds: float   # and its file is removed this long after it ended
    cors_origins: list[str]       # ["*"] any, [] none (browsers then may not call this worker)
    sse_keepalive: float          # seconds between keep-alive comments on an idle /sse stream
    api_token: str | None         # the manager's API_TOKEN: required on the routes (contracts/auth.py)
    # Talking by voice (listening.py)
    asr_server: str               # the recognition server viewers' speech streams to
    language: str                 # what the viewers speak
    vad: VadSettings
    barge_in: bool                # BARGE_IN: a viewer speaking silences the avatar, unless its offer says not


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lipsync_worker",
                                description="One avatar, many WebRTC viewers (LiveTalking-compatible flags).")
    p.add_argument("--transport", default="webrtc", choices=["webrtc"])
    p.add_argument("--model", default="puppet",
                   help="lip-sync engine: puppet (CPU, no weights; the default) or musetalk (weights in MODELS_DIR)")
    # LiveTalking's flag, and the manager's: it names the avatar (its folder), not an instance.
    p.add_argument("--avatar_id", dest="avatar_name", required=True, help="the avatar's name: its folder "
                   "$AVATAR_DATA_DIR/avatars/NAME/")
    p.add_argument("--max_session", type=int, default=8)
    p.add_argument("--listenport", type=int, default=WORKER_PORT)
    p.add_argument("--listenhost", default=os.environ.get("WORKER_HOST", "127.0.0.1"))
    p.add_argument("--tts", default="espeak", help="TTS model: espeak (in-process), edgetts, sovits, ...")
    p.add_argument("--TTS_SERVER", default=None, help="URL of the TTS server; default: the model's port")
    p.add_argument("--REF_FILE", default=None, help="voice (timbre name or voice id)")
    p.add_argument("--REF_TEXT", default=None, help="accepted for LiveTalking compatibility; set on the TTS server")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--instance_token", default=os.environ.get("INSTANCE_TOKEN"))
    p.add_argument("--ASR_SERVER", default=f"http://127.0.0.1:{ASR_PORTS[DEFAULT_ASR_MODEL]}",
                   help="URL of the speech recognition server (python -m asr_services); default: sphinx's port")
    p.add_argument("--language", default=DEFAULT_LANGUAGE, help="what viewers speak to the avatar: en, fa, ...")
    return p


def _ice_servers(raw: str) -> list[RTCIceServer]:
    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in parse_ice_servers(raw)]


def from_args(argv: list[str] | None = None) -> WorkerSettings:
    args, unknown = parser().parse_known_args(argv)
    if unknown:
        log.warning("ignoring LiveTalking flags this worker does not use: %s", " ".join(unknown))
    if args.max_session < 1 or args.batch_size < 1:
        raise ValueError("--max_session and --batch_size must be at least 1")
    check_language(args.language)
    token = args.instance_token
    if not token:
        token = secrets.token_hex(16)
        log.info("no --instance_token given; using %s", token)
    env = os.environ
    return WorkerSettings(
        avatar_name=args.avatar_name, model=args.model, max_session=args.max_session, host=args.listenhost,
        port=args.listenport, tts=args.tts, tts_server=args.TTS_SERVER, voice=args.REF_FILE,
        batch_size=args.batch_size, instance_token=token,
        data_dir=data_dir(env), models_dir=models_dir(env),
        ice_servers=_ice_servers(env.get("ICE_SERVERS", "")),
        webrtc_ports=port_range(env, "WEBRTC_PORT_RANGE"),
        connect_timeout=number(env, "WEBRTC_CONNECT_TIMEOUT", 30.0, 1.0),
        max_connecting_per_client=number(env, "MAX_CONNECTING_PER_CLIENT", 4, 1, int),
        max_text_chars=number(env, "MAX_TEXT_CHARS", 2000, 1, int),
        max_queued_speech_seconds=number(env, "MAX_QUEUED_SPEECH_SECONDS", 300.0, 1.0),
        max_audio_seconds=number(env, "MAX_AUDIO_SECONDS", 120.0, 1.0),
        llm_url=env.get("LLM_URL") or None, llm_model=env.get("LLM_MODEL", "gpt-4o-mini"),
        llm_api_key=env.get("LLM_API_KEY", ""), llm_system_prompt=env.get("LLM_SYSTEM_PROMPT", ""),
        record_max_seconds=number(env, "RECORD_MAX_SECONDS", 300.0, 0.04),
        record_max_bytes=number(env, "RECORD_MAX_BYTES", 200_000_000, 10_000, int),
        record_retention_seconds=number(env, "RECORD_RETENTION_SECONDS", 600.0, 0.0),
        cors_origins=allowed_origins(env.get("CORS_ORIGINS"), token_set=token_from(env) is not None),
        sse_keepalive=number(env, "SSE_KEEPALIVE_SECONDS", 15.0, 1.0),
        api_token=token_from(env),
        asr_server=args.ASR_SERVER, language=args.language,
        vad=VadSettings(threshold=number(env, "VAD_THRESHOLD", 0.5, 0.05),
                        silence_ms=number(env, "VAD_SILENCE_MS", 400, 100, int),
                        min_speech_ms=number(env, "VAD_MIN_SPEECH_MS", 250, 0, int)),
        barge_in=switch(env, "BARGE_IN", True),
    )
