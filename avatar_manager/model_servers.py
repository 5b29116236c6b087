"""Model servers, one per model, started the first time an avatar needs one: the TTS servers
(tts_services, one per voice model) and the ASR servers (asr_services, one per speech
recognition model). Both kinds take `--model NAME --port PORT` and answer GET /health with
{"status": "ok", "model": NAME}."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from contracts import asr_models, tts_models

from . import procs
from .steps import Child, Proc, Report, Steps, backoff_delay

log = logging.getLogger("avatar_manager.model_servers")
OWNER_ENV = "AVATAR_FLEET_OWNER"
OTHERS_RECHECK = 30.0  # seconds a server not ours that answered is trusted without a look


@dataclass(frozen=True)
class Kind:
    """A kind of model server: the program that serves one model, and that kind's models."""
    name: str                        # "tts", "asr": its log files start with it
    module: str                      # the server: python -m MODULE --model NAME --port PORT
    models: tuple[str, ...]          # canonical names
    canonical: Callable[[str], str]  # any spelling a config may use -> one of models; ValueError when unknown
    meanwhile: str                   # what a worker does while its server cannot be had

    @property
    def label(self) -> str:
        return self.name.upper()


TTS = Kind("tts", "tts_services", tts_models.MODELS, tts_models.canonical_model,
           "workers fall back to the offline voice meanwhile")
ASR = Kind("asr", "asr_services", asr_models.MODELS, asr_models.canonical_model,
           "workers go without speech recognition meanwhile")


@dataclass(frozen=True)
class ServedModel:
    kind: Kind
    name: str
    port: int

    @property
    def label(self) -> str:
        """'the espeak TTS server', as logs and messages name it."""
        return f"the {self.name} {self.kind.label} server"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + "/health"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.kind.module, "--model", self.name, "--port", str(self.port)]


def table(kind: Kind, ports: dict[str, int]) -> dict[str, ServedModel]:
    """Canonical model name -> how to run its server (ports: Settings.tts_ports or asr_ports)."""
    return {name: ServedModel(kind, name, ports[name]) for name in kind.models}


def model_for(kind: Kind, ports: dict[str, int], name: str) -> ServedModel:
    """'edgeTTS', 'GPT-SoVITS', 'faster-whisper', ... -> how to run its server; ValueError when unknown."""
    canonical = kind.canonical(name)
    return ServedModel(kind, canonical, ports[canonical])


def probe(model: ServedModel, timeout: float = 1.0) -> dict | None:
    """The model's server's /health, when a server of that model answers on its port."""
    body = procs.get_json(model.health_url, timeout)
    return body if body is not None and body.get("status") == "ok" and body.get("model") == model.name else None


def serving(model: ServedModel, timeout: float = 1.0) -> bool:
    return probe(model, timeout) is not None


class ModelServers:
    """The servers of one kind this host agent owns, a Child record each: those it started, and
    those an earlier manager started (adopted). A server an operator runs on the model's port is
    used, not owned. Started when a worker first needs one; a server of ours that dies is started
    again with backoff. Driven by the agent's loop, like the supervisor: only the loop changes a
    record."""

    def __init__(self, kind: Kind, ports: dict[str, int], owner: str, log_dir: Path, startup_timeout: float,
                 stop_timeout: float, api_token: str | None, steps: Steps,
                 shutting_down: Callable[[], bool]) -> None:
        self.kind = kind
        self.models = table(kind, ports)
        self.api_token = api_token  # our servers require it on their routes; /health stays open
        self.owner = owner  # marks our servers (in their environment), so we adopt no one else's
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.steps = steps
        self.shutting_down = shutting_down
        self.servers = {name: Child(name) for name in self.models}
        self.ran: set[str] = set()  # servers of ours that were up: started again when they die

    def ready_for(self, model: ServedModel, now: float) -> bool:
        """Whether a worker that uses `model` may start now: its server is ours and up, or it
        cannot be had for now (it failed a moment ago, or another one answers on its port). False
        while its start is under way, which this call begins if need be."""
        server = self.servers[model.name]
        if server.busy:
            return False
        if server.proc is not None or now < server.retry_at:
            return True
        self.steps.run(server, lambda report: self._start(report, server, model))
        return False

    def tick(self, now: float) -> None:
        """Servers of ours that died are collected (none stays a zombie) and started again after
        a backoff."""
        for name, server in self.servers.items():
            if server.busy:
                continue
            model = self.models[name]
            if server.proc is not None and not procs.alive(server.proc):
                log.warning("%s %s", model.label, procs.how_it_ended(server.proc))
                server.proc = None
                self._failed(server, now)
            elif server.proc is None and name in self.ran and now >= server.retry_at:
                self.steps.run(server, lambda report, server=server, model=model: self._start(report, server, model))

    def _failed(self, server: Child, now: float) -> None:
        server.failures += 1
        server.retry_at = now + backoff_delay(server.failures)

    def _start(self, report: Report, server: Child, model: ServedModel) -> None:
        if serving(model):  # an operator's own server (or ours, adopted meanwhile): used as it is
            report(lambda: self._started(server, None, None))
            return
        log_path = self.log_dir / f"{model.kind.name}_{model.name}_{model.port}.log"
        log.info("starting %s on port %d", model.label, model.port)
        proc = procs.spawn(model.argv(), procs.service_env(self.api_token, **{OWNER_ENV: self.owner}), log_path)
        outcome = procs.wait_ready(proc, lambda: serving(model, timeout=0.5), self.startup_timeout, self.shutting_down)
        if outcome == procs.Outcome.READY:
            report(lambda: self._started(server, proc, None))
            return
        procs.kill_tree(proc, self.stop_timeout)
        why = {procs.Outcome.EXITED: f"{model.label} {procs.how_it_ended(proc)}: {procs.log_tail(log_path, 5)}",
               procs.Outcome.CANCELLED: f"{model.label} was not waited for: shutting down"
               }.get(outcome, f"{model.label} did not answer within {self.startup_timeout:g} s")
        report(lambda: self._started(server, None, why))

    def _started(self, server: Child, proc: Proc | None, why: str | None) -> None:
        if why is not None:
            log.error("%s; %s", why, self.kind.meanwhile)
            self._failed(server, time.time())
            return
        server.proc = proc
        server.failures = 0
        if proc is not None:
            self.ran.add(server.name)
        # An operator's server answered: looked at again only when a worker starts after this.
        server.retry_at = 0.0 if proc is not None else time.time() + OTHERS_RECHECK

    def pids(self) -> set[int]:
        return {s.proc.pid for s in self.servers.values() if s.proc is not None}

    def adopt(self) -> None:
        """Own the servers an earlier manager of ours left running (it was SIGKILLed)."""
        listening = procs.listeners()
        for model in self.models.values():
            proc, server = listening.get(model.port), self.servers[model.name]
            if proc is None or server.proc is not None or server.busy:
                continue
            try:
                ours = proc.cmdline()[1:] == model.argv()[1:] and proc.environ().get(OWNER_ENV) == self.owner
            except psutil.Error:
                continue
            if ours and serving(model):
                server.proc = proc
                self.ran.add(model.name)
                log.info("adopted %s (pid %d)", model.label, proc.pid)

    def stop_all(self) -> None:
        for name, server in self.servers.items():
            if server.proc is not None:
                log.info("stopping %s", self.models[name].label)
                procs.kill_tree(server.proc, self.stop_timeout)
                server.proc = None
