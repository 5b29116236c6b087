"""Configuration of an ASR server, read once from the environment and checked at start."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from contracts import whisper_weights
from contracts.auth import token_from
from contracts.musetalk_weights import models_dir
from contracts.settings import ConfigError, number, url

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Settings:
    max_utterance_seconds: float  # longer utterances are ended by the server (sockets) or refused (413)
    idle_timeout: float           # seconds a socket may send nothing, or read nothing, before it is closed
    connect_timeout: float        # seconds to reach the OpenAI-compatible upstream
    read_timeout: float           # seconds it may take to answer
    sphinx_decoders: int          # utterances pocketsphinx recognises at once (~90 MB each)
    whisper_dir: Path             # a faster-whisper model folder (whisper_weights.FILES)
    whisper_device: str
    whisper_compute_type: str | None   # None: int8 on the CPU, float16 on a GPU
    openai_url: str | None        # the API base, e.g. http://host:8000/v1
    openai_key: str | None
    openai_model: str
    api_token: str | None         # the manager's API_TOKEN: required on the routes (contracts/auth.py)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        device = env.get("WHISPER_DEVICE") or "auto"
        if device not in DEVICES:
            raise ConfigError(f"WHISPER_DEVICE={device!r} must be one of {', '.join(DEVICES)}")
        return cls(
            max_utterance_seconds=number(env, "ASR_MAX_UTTERANCE_SECONDS", 60.0, 1.0),
            idle_timeout=number(env, "ASR_IDLE_TIMEOUT", 30.0, 0.1),
            connect_timeout=number(env, "ASR_CONNECT_TIMEOUT", 2.0, 0.1),
            read_timeout=number(env, "ASR_READ_TIMEOUT", 30.0, 0.1),
            sphinx_decoders=number(env, "SPHINX_DECODERS", 4, 1, int),
            whisper_dir=whisper_weights.folder(models_dir(env),
                                               env.get("WHISPER_MODEL") or whisper_weights.DEFAULT_SIZE),
            whisper_device=device,
            whisper_compute_type=env.get("WHISPER_COMPUTE_TYPE") or None,
            openai_url=url(env, "ASR_URL", None),
            openai_key=env.get("ASR_API_KEY") or None,
            openai_model=env.get("ASR_OPENAI_MODEL") or "whisper-1",
            api_token=token_from(env),
        )
