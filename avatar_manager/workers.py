"""What runs for an avatar: its config.json turned into a worker command line and environment."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from contracts.asr_models import check_language
from contracts.avatars import read_config
from contracts.cors import as_setting
from contracts.engines import needs_gpu

from .instances import Instance
from .model_servers import ASR, TTS, ServedModel, model_for
from .procs import service_env
from .settings import Settings


@dataclass(frozen=True)
class AvatarSpec:
    name: str
    engine: str
    tts: ServedModel
    timbre: str
    asr: ServedModel
    language: str             # what its viewers speak
    transport: str
    max_session: int

    @property
    def needs_gpu(self) -> bool:
        return needs_gpu(self.engine)


def avatar_spec(settings: Settings, name: str) -> AvatarSpec:
    """The avatar's settings; NoSuchAvatar / AvatarError (both ValueError) when it cannot be run."""
    config = read_config(settings.data_dir, name)
    try:
        max_session = int(config["max_session"])
        if max_session < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"avatar {name!r}: max_session={config['max_session']!r} must be a positive integer") \
            from None
    tts = model_for(TTS, settings.tts_ports, str(config["tts_model"]))
    asr = model_for(ASR, settings.asr_ports, str(config["asr_model"]))
    return AvatarSpec(name=name, engine=str(config["avatar_model"]).lower(), tts=tts, timbre=str(config["timbre"]),
                      asr=asr, language=check_language(config["language"]), transport=str(config["transport"]),
                      max_session=max_session)


def log_path(settings: Settings, instance: Instance) -> Path:
    return settings.log_dir / f"avatar_{instance.instance_id}_{instance.port}.log"


@dataclass(frozen=True)
class Fence:
    """A worker ends itself once `path` (touched by its agent at each lease renewal) is older
    than `after` seconds (lipsync_worker/fence.py)."""
    path: Path
    after: float


def command(settings: Settings, spec: AvatarSpec, instance: Instance,
            fence: Fence | None = None) -> tuple[list[str], dict[str, str]]:
    """The argument list (never a shell string) and environment of the avatar's worker."""
    # Each value glued to its flag: a config.json value (a timbre "-x") is never read as an option.
    argv = [sys.executable, "-m", settings.worker_module,
            f"--transport={spec.transport}", f"--model={spec.engine}", f"--avatar_id={spec.name}",
            f"--max_session={spec.max_session}", f"--listenport={instance.port}",
            f"--tts={spec.tts.name}", f"--TTS_SERVER={spec.tts.url}", f"--REF_FILE={spec.timbre}",
            f"--ASR_SERVER={spec.asr.url}", f"--language={spec.language}"]
    # It requires our API token on its routes, and gets the CORS origins we decided, which then
    # hold for the whole fleet.
    # It listens where the API processes reach it (WORKER_HOST, when set, wins: e.g. 0.0.0.0).
    env = service_env(settings.api_token, INSTANCE_TOKEN=instance.token, AVATAR_DATA_DIR=str(settings.data_dir),
                      CUDA_VISIBLE_DEVICES=str(instance.gpu) if instance.gpu >= 0 else "", PYTHONUNBUFFERED="1",
                      CORS_ORIGINS=as_setting(settings.cors_origins),
                      WORKER_HOST=os.environ.get("WORKER_HOST") or settings.host_address, HOST_ID=settings.host_id,
                      **({"FENCE_FILE": str(fence.path), "FENCE_AFTER": f"{fence.after:g}"} if fence else {}))
    return argv, env
