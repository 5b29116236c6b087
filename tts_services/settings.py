"""Configuration of a TTS server, read once from the environment and checked at start."""
from __future__ import annotations

import os
from dataclasses import dataclass

from contracts.auth import token_from
from contracts.ports import UPSTREAM_URLS
from contracts.settings import number, url


@dataclass(frozen=True)
class Settings:
    max_text_chars: int
    connect_timeout: float   # seconds to reach an upstream (edge-tts, bridges)
    read_timeout: float      # seconds an upstream may stay silent mid-answer
    edgetts_proxy: str | None
    sovits_url: str
    sovits_ref_audio: str | None
    sovits_ref_text: str
    sovits_ref_lang: str
    cosyvoice_url: str
    cosyvoice_ref_audio: str | None
    cosyvoice_ref_text: str
    cosyvoice_spk_id: str | None
    cosyvoice_sample_rate: int
    tacotron_url: str | None
    tacotron_speaker: str | None
    api_token: str | None    # the manager's API_TOKEN: required on the routes (contracts/auth.py)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        return cls(
            max_text_chars=number(env, "TTS_MAX_TEXT_CHARS", 2000, 1, int),
            connect_timeout=number(env, "TTS_CONNECT_TIMEOUT", 2.0, 0.1),
            read_timeout=number(env, "TTS_READ_TIMEOUT", 30.0, 0.1),
            edgetts_proxy=url(env, "EDGETTS_PROXY", None),
            sovits_url=url(env, "SOVITS_URL", UPSTREAM_URLS["sovits"]),
            sovits_ref_audio=env.get("SOVITS_REF_AUDIO") or None,
            sovits_ref_text=env.get("SOVITS_REF_TEXT", ""),
            sovits_ref_lang=env.get("SOVITS_REF_LANG", "en"),
            cosyvoice_url=url(env, "COSYVOICE_URL", UPSTREAM_URLS["cosyvoice"]),
            cosyvoice_ref_audio=env.get("COSYVOICE_REF_AUDIO") or None,
            cosyvoice_ref_text=env.get("COSYVOICE_REF_TEXT", ""),
            cosyvoice_spk_id=env.get("COSYVOICE_SPK_ID") or None,
            cosyvoice_sample_rate=number(env, "COSYVOICE_SAMPLE_RATE", 24000, 8000, int),
            tacotron_url=url(env, "TACOTRON_URL", None),
            tacotron_speaker=env.get("TACOTRON_SPEAKER") or None,
            api_token=token_from(env),
        )
