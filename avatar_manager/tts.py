"""TTS servers, one per voice model, started the first time an avatar needs one."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from contracts.tts_models import MODELS, canonical_model

from . import procs

log = logging.getLogger("avatar_manager.tts")
OWNER_ENV = "AVATAR_FLEET_OWNER"


@dataclass(frozen=True)
class TtsModel:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + "/health"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "tts_services", "--model", self.name, "--port", str(self.port)]


def table(ports: dict[str, int]) -> dict[str, TtsModel]:
    """Normalised model name -> how to run it (ports: Settings.tts_ports)."""
    return {name: TtsModel(name, ports[name]) for name in MODELS}


def model_for(models: dict[str, TtsModel], tts_model: str) -> TtsModel:
    """'edgeTTS', 'GPT-SoVITS', 'TacoTron2', ... -> its entry in `models`; ValueError when unknown."""
    return models[canonical_model(tts_model)]


def probe(model: TtsModel, timeout: float = 1.0) -> dict | None:
    """The model's server's /health, when a server of that model answers on its port."""
    body = procs.get_json(model.health_url, timeout)
    return body if body is not None and body.get("status") == "ok" and body.get("model") == model.name else None


def serving(model: TtsModel, timeout: float = 1.0) -> bool:
    return probe(model, timeout) is not None


class TtsServers:
    """The TTS servers this supervisor owns: those it started, and those an earlier manager
    started (adopted). A server an operator runs on the model's port is used, not owned."""

    def __init__(self, models: dict[str, TtsModel], owner: str, log_dir: Path, startup_timeout: float,
                 stop_timeout: float, api_token: str | None) -> None:
        self.models = models
        self.api_token = api_token  # our servers require it on /tts; /health stays open
        self.owner = owner  # marks our servers (in their environment), so we adopt no one else's
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._procs: dict[str, subprocess.Popen | psutil.Process] = {}
        self._locks = {name: threading.Lock() for name in models}

    def ensure(self, model: TtsModel, cancelled: Callable[[], bool] = lambda: False) -> str | None:
        """Make sure the model's server answers; None when it does, else why it does not."""
        with self._locks[model.name]:
            if serving(model):
                return None
            proc = self._procs.get(model.name)
            if proc is not None:
                del self._procs[model.name]
                procs.kill_tree(proc, self.stop_timeout)  # ours, but not answering
            log_path = self.log_dir / f"tts_{model.name}_{model.port}.log"
            log.info("starting the %s TTS server on port %d", model.name, model.port)
            proc = procs.spawn(model.argv(), procs.service_env(self.api_token, **{OWNER_ENV: self.owner}), log_path)
            outcome = procs.wait_ready(proc, lambda: serving(model, timeout=0.5), self.startup_timeout, cancelled)
            if outcome == procs.Outcome.READY:
                self._procs[model.name] = proc
                return None
            # Not one of ours to restart later: the next worker that needs it tries again.
            procs.kill_tree(proc, self.stop_timeout)
            if outcome == procs.Outcome.EXITED:
                return (f"the {model.name} TTS server {procs.how_it_ended(proc)}: "
                        f"{procs.log_tail(log_path, 5)}")
            if outcome == procs.Outcome.CANCELLED:
                return f"the {model.name} TTS server was not waited for: shutting down"
            return f"the {model.name} TTS server did not answer within {self.startup_timeout:g} s"

    def pids(self) -> set[int]:
        return {p.pid for p in self._procs.values()}

    def reap(self) -> list[TtsModel]:
        """The servers of ours that died (their exit status collected, so none stays a zombie)."""
        dead = []
        for name, proc in list(self._procs.items()):
            if not self._locks[name].acquire(blocking=False):
                continue  # being started or checked right now
            try:
                if not procs.alive(proc) and self._procs.get(name) is proc:
                    log.warning("the %s TTS server %s", name, procs.how_it_ended(proc))
                    del self._procs[name]
                    dead.append(self.models[name])
            finally:
                self._locks[name].release()
        return dead

    def adopt(self) -> None:
        """Own the TTS servers an earlier manager of ours left running (it was SIGKILLed)."""
        listening = procs.listeners()
        for model in self.models.values():
            proc = listening.get(model.port)
            if proc is None or model.name in self._procs:
                continue
            try:
                ours = proc.cmdline()[1:] == model.argv()[1:] and proc.environ().get(OWNER_ENV) == self.owner
            except psutil.Error:
                continue
            if ours and serving(model):
                self._procs[model.name] = proc
                log.info("adopted the %s TTS server (pid %d)", model.name, proc.pid)

    def stop_all(self) -> None:
        for name, proc in list(self._procs.items()):
            log.info("stopping the %s TTS server", name)
            procs.kill_tree(proc, self.stop_timeout)
            del self._procs[name]
