"""python -m avatar_manager doctor: check this host and explain what to fix, one line per finding.

    [ ok ] what is fine
    [info] what may matter later (no internet for edge-tts, ...)
    [warn] what works, but not as it could — what to do
    [fail] what stops the service, or an avatar, from starting — what to do

Exit status 0 when nothing failed (warnings do not fail), 1 otherwise. Safe to run before the
manager starts and while it runs: it reads, probes and never changes the fleet (opening the SQLite
store creates its file, as the manager's start would). No check can hang: a network probe waits
at most a second, and a check still busy after CHECK_TIMEOUT seconds is reported as a fail.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from contracts import asr_models
from contracts import musetalk_weights as weights
from contracts import whisper_weights
from contracts.avatars import FORMAT, NAME, avatar_dir, is_livetalking, prepare_command, read_config
from contracts.engines import ENGINES, needs_gpu

from .lease import FLEET
from .settings import ConfigError, Settings

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
LABELS = {OK: "[ ok ]", INFO: "[info]", WARN: "[warn]", FAIL: "[fail]"}
Finding = tuple[str, str, str]  # (level, what, fix); fix is "" for ok and info
CHECK_TIMEOUT = 20.0  # seconds one check may take before it is reported as hanging
PROBE_TIMEOUT = 1.0   # seconds for any network probe
CLI_TIMEOUT = 15.0    # seconds for a component's own command (the TTS server's checks), within CHECK_TIMEOUT
INSTALL = "run ./start.sh install"
ROOT = Path(__file__).resolve().parent.parent

# (import name, distribution) of every package the manager, the workers and the TTS and ASR servers import.
PACKAGES = [
    ("flask", "flask"), ("flask_cors", "flask-cors"), ("gunicorn", "gunicorn"), ("redis", "redis"),
    ("psutil", "psutil"), ("pynvml", "nvidia-ml-py"), ("aiohttp", "aiohttp"), ("aiortc", "aiortc"),
    ("av", "av"), ("cv2", "opencv-python-headless"), ("numpy", "numpy"),
    ("prometheus_client", "prometheus-client"), ("edge_tts", "edge-tts"),
    ("espeakng_loader", "espeakng-loader"), ("soxr", "soxr"), ("num2words", "num2words"),
    ("pocketsphinx", "pocketsphinx"), ("faster_whisper", "faster-whisper"),
]

EDGE_TTS_HOST = "speech.platform.bing.com"


@dataclass
class Context:
    """What the checks share: the environment, and what earlier checks found."""
    env: dict
    settings: Settings | None = None
    store: object | None = None           # the open Store, once the store check reached it
    gpus: list | None = None              # GPUs NVML reports; [] without NVML
    tts_used: set[str] = field(default_factory=set)
    espeak: dict | None = None            # what `python -m tts_services offline-voice --speak` said
    hung: bool = False


def ok(what: str) -> Finding:
    return (OK, what, "")


def info(what: str) -> Finding:
    return (INFO, what, "")


def warn(what: str, fix: str) -> Finding:
    return (WARN, what, fix)


def fail(what: str, fix: str) -> Finding:
    return (FAIL, what, fix)


# --- configuration -----------------------------------------------------------------------------

def check_configuration(ctx: Context) -> list[Finding]:
    try:
        s = Settings.from_env(ctx.env)
    except ConfigError as exc:
        match = re.match(r"([A-Z][A-Z0-9_]*)=", str(exc))
        var = match.group(1) if match else "the setting"
        return [fail(f"configuration: {exc}", f"set {var} to a valid value, or unset it for the default")]
    ctx.settings = s
    found = [ok(f"configuration: data {s.data_dir}, API {s.host}:{s.port}, avatar ports "
                f"{s.ports.start}-{s.ports.stop - 1} (MAX_AVATARS={s.max_avatars}), logs {s.log_dir}")]
    if not s.api_token and s.host not in ("127.0.0.1", "localhost", "::1"):
        found.append(warn(f"configuration: the API listens on {s.host} without API_TOKEN",
                          "set API_TOKEN, or AVATAR_MANAGER_HOST=127.0.0.1 behind a proxy"))
    return found


def _component(ctx: Context, *argv: str) -> dict:
    """The JSON object a component's own check command (`python -m ...`, fixed arguments) prints,
    run in our environment; RuntimeError saying why when it prints none."""
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=ctx.env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"'{' '.join(argv)}' exited with code {done.returncode}: {last}")
    return answer


def check_tts_configuration(ctx: Context) -> list[Finding]:
    """The TTS servers' own settings, as their command reads them."""
    answer = _component(ctx, "-m", "tts_services", "check-config")
    if answer.get("error"):
        return [fail(f"TTS configuration: {answer['error']}", "fix that variable; the TTS servers will not start")]
    return []


# --- dependencies ------------------------------------------------------------------------------

def _pins() -> dict[str, str]:
    """requirements.txt's `name==version` pins, by lower-case distribution name."""
    pins = {}
    try:
        for line in (ROOT / "requirements.txt").read_text().splitlines():
            name, sep, version = line.split("#")[0].strip().partition("==")
            if sep:
                pins[name.strip().lower()] = version.strip()
    except OSError:
        pass
    return pins


def _version(module, dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "?"))


def check_dependencies(ctx: Context) -> list[Finding]:
    found, pins = [], _pins()
    for name, dist in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # ImportError, or a library that fails to load (OSError)
            found.append(fail(f"package {name} ({dist}) does not import: {type(exc).__name__}: {exc}", INSTALL))
            continue
        version = _version(module, dist)
        pinned = pins.get(dist)
        if name == "cv2" and not hasattr(module, "CascadeClassifier"):
            found.append(fail(f"package cv2 {version} has no CascadeClassifier (OpenCV 5); avatars cannot "
                              "be prepared", f"pip install 'opencv-python-headless<5', or {INSTALL}"))
        elif name == "cv2" and not os.path.isfile(module.data.haarcascades + "haarcascade_frontalface_default.xml"):
            found.append(fail(f"package cv2 {version} ships no Haar face cascade", INSTALL))
        elif pinned and version != pinned:
            found.append(warn(f"package {name} {version} (requirements.txt pins {pinned})", INSTALL))
        else:
            found.append(ok(f"package {name} {version}"))
    return found


# --- log dir -----------------------------------------------------------------------------------

def check_log_dir(ctx: Context) -> list[Finding]:
    log_dir = ctx.settings.log_dir
    existing = log_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [fail(f"log dir {log_dir}: {existing} is not a folder", "set LOG_DIR to a writable folder")]
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return [fail(f"log dir {log_dir} is not writable ({exc.strerror})",
                     "set LOG_DIR to a folder this user can write, or fix its permissions")]
    if existing != log_dir:
        return [ok(f"log dir {log_dir} (created at start; {existing} is writable)")]
    return [ok(f"log dir {log_dir} writable")]


# --- store and supervisor ----------------------------------------------------------------------

def _redis_probe(url: str) -> tuple[str | None, str | None]:
    """(server version, None) when Redis answers within PROBE_TIMEOUT, else (None, why)."""
    import redis

    from .store.redis_client import connect  # the store's own client: Sentinel URLs too
    try:
        client = connect(url, PROBE_TIMEOUT)
        try:
            return str(client.info("server").get("redis_version", "?")), None
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as exc:
        return None, str(exc) or type(exc).__name__


def check_store(ctx: Context) -> list[Finding]:
    from .store import StoreError, open_store
    s = ctx.settings
    if s.redis_url:
        from .store.redis import redacted
        where = f"Redis {redacted(s.redis_url)}"
        fix = "start redis-server, or check REDIS_URL (host, port, password, database)"
        version, error = _redis_probe(s.redis_url)
        if error:
            return [fail(f"store: {where} does not answer ({error})", fix)]
        what = f"store: {where} (redis {version}; shared by every host using it)"
    else:
        where = f"SQLite {s.data_dir / 'manager.sqlite3'}"
        fix = "check that AVATAR_DATA_DIR exists and is writable, and that the disk is not full"
        what = f"store: {where} (single host; set REDIS_URL to share the fleet across hosts)"
    try:
        store = open_store(s)
        store.ping()
    except (StoreError, OSError) as exc:
        return [fail(f"store: {where}: {exc}", fix)]
    ctx.store = store
    return [ok(what)]


def check_supervisor(ctx: Context) -> list[Finding]:
    holder = ctx.store.lease_holder(FLEET)
    states = Counter(instance.state.value for instance in ctx.store.list())
    recorded = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
    if holder is None:
        return [warn(f"supervisor: no manager running (instances recorded: {recorded})",
                     "start it with ./start.sh or python -m avatar_manager")]
    return [ok(f"supervisor {holder} running (instances: {recorded})")]


# --- GPUs --------------------------------------------------------------------------------------

def check_gpus(ctx: Context) -> list[Finding]:
    from . import gpus
    s = ctx.settings
    reason = gpus.unavailable_reason()
    if reason is not None:
        ctx.gpus = []
        found = [warn(f"GPUs: none ({reason})", "instances run on the CPU (puppet engine)")]
        if s.gpu_ids:
            found.append(warn(f"GPU_IDS={','.join(map(str, s.gpu_ids))} is set, but there are no GPUs",
                              "unset GPU_IDS, or install the NVIDIA driver"))
        return found
    ctx.gpus = found_gpus = gpus.read_gpus(None)
    if not found_gpus:
        return [warn("GPUs: NVML works but reports no GPU", "instances run on the CPU; check nvidia-smi")]
    found = []
    for gpu in found_gpus:
        what = f"GPU {gpu.index} {gpu.name}: {gpu.free_mb} of {gpu.total_mb} MB free"
        if s.gpu_ids is not None and gpu.index not in s.gpu_ids:
            found.append(info(f"{what}; not used (not in GPU_IDS)"))
        elif gpu.free_mb < s.gpu_min_free_mb:
            found.append(warn(f"{what}, below GPU_MIN_FREE_MB={s.gpu_min_free_mb}",
                              "no new instance is placed on it; free GPU memory or lower GPU_MIN_FREE_MB"))
        else:
            found.append(ok(what))
    indexes = {gpu.index for gpu in found_gpus}
    for missing in [i for i in s.gpu_ids or [] if i not in indexes]:
        found.append(warn(f"GPU_IDS names GPU {missing}, which this host does not have "
                          f"(GPUs: {', '.join(str(i) for i in sorted(indexes))})", "remove it from GPU_IDS"))
    return found


# --- ports -------------------------------------------------------------------------------------

def _listeners() -> dict[int, str]:
    """Local TCP port -> 'name, pid N' where the OS tells us; empty where it does not."""
    try:
        import psutil

        from .procs import listeners
    except ImportError:  # psutil missing: reported with the dependencies
        return {}
    holders = {}
    for port, proc in listeners().items():
        try:
            holders[port] = f"{proc.name()}, pid {proc.pid}"
        except psutil.Error:
            holders[port] = f"pid {proc.pid}"
    return holders


def _held_by(port: int, holders: dict[int, str]) -> str:
    return f"{port} ({holders[port]})" if port in holders else str(port)


def check_ports(ctx: Context) -> list[Finding]:
    from .instances import HOLDS_PORT
    from .model_servers import ASR, TTS, serving, table
    from .ports import is_free
    from .procs import get_json
    s = ctx.settings
    holders = _listeners()
    found = []

    if is_free(s.port):
        found.append(ok(f"manager port {s.port} free"))
    else:
        body = get_json(s.api_url + "/health", PROBE_TIMEOUT) or {}
        if body.get("service") == "avatar-manager":
            found.append(ok(f"manager port {s.port}: a manager already runs there (version {body.get('version')})"))
        else:
            found.append(fail(f"manager port {_held_by(s.port, holders)} is held by another program",
                              "stop that program, or set AVATAR_MANAGER_PORT to a free port"))

    ours = {i.port for i in ctx.store.list() if i.state in HOLDS_PORT} if ctx.store is not None else set()
    span = f"avatar ports {s.ports.start}-{s.ports.stop - 1}"
    busy = [p for p in s.ports if not is_free(p)]
    foreign = [p for p in busy if p not in ours]
    mine = len(busy) - len(foreign)
    if not foreign:
        held = f", {mine} held by avatar instances" if mine else ""
        found.append(ok(f"{span}: {len(s.ports) - len(busy)} free{held}"))
    else:
        listed = ", ".join(_held_by(p, holders) for p in foreign[:10]) + (", ..." if len(foreign) > 10 else "")
        what = f"{span}: {len(foreign)} of {len(s.ports)} busy by other programs: {listed}"
        if len(foreign) == len(s.ports):
            found.append(fail(what, "no avatar can start; free those ports or move AVATAR_BASE_PORT"))
        else:
            found.append(warn(what, "the manager skips them; free them or move AVATAR_BASE_PORT"))

    for kind, ports in ((TTS, s.tts_ports), (ASR, s.asr_ports)):
        for model in table(kind, ports).values():
            what = f"{kind.label} port {model.port} ({model.name})"
            if model.port in s.ports or model.port == s.port:
                found.append(warn(f"{what} lies in the manager's ports",
                                  f"move AVATAR_BASE_PORT or AVATAR_MANAGER_PORT away from the {kind.label} ports "
                                  f"({', '.join(map(str, sorted(ports.values())))})"))
            elif is_free(model.port):
                found.append(ok(f"{what} free"))
            elif serving(model, timeout=PROBE_TIMEOUT / 2):
                found.append(ok(f"{kind.label} port {model.port}: the {model.name} server already runs there"))
            else:
                found.append(warn(f"{kind.label} port {_held_by(model.port, holders)} ({model.name}) is held by "
                                  f"another program", f"avatars using {model.name} get no {kind.label} server; "
                                                      f"free port {model.port}"))
    return found


# --- avatars -----------------------------------------------------------------------------------

def _images(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.lower().endswith((".png", ".jpg", ".jpeg")))


def _folder_problem(path: Path, config: dict) -> tuple[str | None, int]:
    """What is wrong with the avatar's pictures and regions (without loading pictures), and the frame count."""
    if is_livetalking(path):
        frames = _images(path / "full_imgs")
        return (None if frames else f"{path / 'full_imgs'} holds no frames"), frames
    if config.get("format") != FORMAT:
        return f"config.json has format {config.get('format')!r}, expected {FORMAT}", 0
    if not (path / "frames").is_dir():
        return f"{path / 'frames'} is missing", 0
    frames = _images(path / "frames")
    if frames == 0:
        return f"{path / 'frames'} holds no frames", 0
    try:
        regions = json.loads((path / "regions.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{path / 'regions.json'} is missing or broken ({exc})", frames
    if not isinstance(regions, list) or len(regions) != frames:
        count = len(regions) if isinstance(regions, list) else "no list of"
        return f"{count} regions in regions.json for {frames} frames", frames
    return None, frames


def _espeak(ctx: Context) -> dict:
    """What the offline voice (espeak, as the TTS server runs it) says of itself, asked once per
    run: its "voices" and the "samples" of a test word, or the "error" it met."""
    if ctx.espeak is None:
        try:
            ctx.espeak = _component(ctx, "-m", "tts_services", "offline-voice", "--speak")
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            ctx.espeak = {"error": f"{type(exc).__name__}: {exc}"}
    return ctx.espeak


def _asr_problem(ctx: Context, model: str) -> tuple[str, str] | None:
    """(why, fix) when the ASR server of `model` would exit at start here."""
    if model == "whisper":
        size = ctx.env.get("WHISPER_MODEL") or whisper_weights.DEFAULT_SIZE
        folder = whisper_weights.folder(weights.models_dir(ctx.env).resolve(), size)
        absent = whisper_weights.missing(folder)
        if absent:
            return (f"no whisper weights: {folder} lacks {', '.join(absent)}",
                    f"run '{whisper_weights.DOWNLOAD_COMMAND.format(size=folder.name)}'")
    if model == "openai" and not ctx.env.get("ASR_URL"):
        return "ASR_URL is not set", "set ASR_URL to an OpenAI-compatible transcription service"
    return None


def _check_avatar(ctx: Context, name: str) -> list[Finding]:
    from .workers import avatar_spec
    s = ctx.settings
    prepare = f"prepare it again: {prepare_command(name)}"
    edit = f"edit {s.avatars_dir / name / 'config.json'}"
    try:
        config = read_config(s.data_dir, name)
    except ValueError as exc:
        return [fail(f"avatar {name}: {exc}", prepare)]
    try:
        spec = avatar_spec(s, name)
    except ValueError as exc:
        return [fail(f"avatar {name}: {exc}", edit)]
    problem, frames = _folder_problem(avatar_dir(s.data_dir, name), config)
    if problem:
        return [fail(f"avatar {name}: {problem}", prepare)]
    if spec.engine not in ENGINES:
        return [fail(f"avatar {name}: engine {spec.engine!r} is not in this build (engines: {', '.join(ENGINES)})",
                     f"{edit}: set avatar_model to puppet")]
    ctx.tts_used.add(spec.tts.name)
    found = [ok(f"avatar {name}: {spec.engine} engine, {spec.tts.name} TTS (voice {spec.timbre}), "
                f"{spec.asr.name} ASR ({spec.language}), {frames} frame{'s' if frames != 1 else ''}, "
                f"max_session {spec.max_session}")]
    if spec.engine == "musetalk":
        folder = weights.models_dir(ctx.env).resolve()
        if weights.missing(folder):
            return [fail(f"avatar {name}: its musetalk worker would exit at start: no MuseTalk weights in "
                         f"MODELS_DIR={folder}", f"run '{weights.DOWNLOAD_COMMAND}', or {edit}: set avatar_model "
                                                 "to puppet")]
    if needs_gpu(spec.engine) and not ctx.gpus:
        found.append(warn(f"avatar {name}: the {spec.engine} engine needs a GPU and this host has none",
                          f"run it on a GPU host, or {edit}: set avatar_model to puppet"))
    unheard = _asr_problem(ctx, spec.asr.name)
    if unheard:
        why, fix = unheard
        found.append(warn(f"avatar {name}: its {spec.asr.name} ASR server would exit at start ({why}); its viewers "
                          f"would not be heard", f"{fix}, or {edit}: set asr_model to {asr_models.DEFAULT_MODEL}"))
    # Without the voices (espeak does not load), the TTS voices check says why.
    voices = _espeak(ctx).get("voices", []) if spec.tts.name == "espeak" else []
    if voices and spec.timbre not in voices:
        found.append(warn(f"avatar {name}: voice {spec.timbre!r} is not an espeak voice; it would not speak",
                          f"{edit}: set timbre to one of {', '.join(voices[:6])}, ..."))
    return found


def check_avatars(ctx: Context) -> list[Finding]:
    root = ctx.settings.avatars_dir
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    if not names:
        return [warn(f"avatars: none in {root}, so no avatar can start",
                     f"./start.sh prepares a demo avatar (or {prepare_command('NAME')})")]
    found = []
    for name in names:
        if not NAME.match(name):
            found.append(warn(f"avatars/{name}: not a valid avatar name; it cannot be started",
                              "rename it to 1-64 letters, digits, '_' or '-'"))
        else:
            found.extend(_check_avatar(ctx, name))
    return found


# --- voices and weights ------------------------------------------------------------------------

def _reachable(host: str, port: int) -> str | None:
    """None when a TCP connection to host:port opens within the probe timeouts, else why not."""
    answer: list = []

    def resolve() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            answer.append(exc)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT)
    if not answer:
        return f"no DNS answer for {host} within {PROBE_TIMEOUT:g} s"
    if isinstance(answer[0], OSError):
        return f"DNS: {answer[0]}"
    family, kind, proto, _, address = answer[0][0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(PROBE_TIMEOUT)
            s.connect(address)
    except OSError as exc:
        return f"{host}:{port}: {exc}"
    return None


def check_voices(ctx: Context) -> list[Finding]:
    found = []
    espeak = _espeak(ctx)
    if "samples" not in espeak:
        found.append(fail(f"TTS espeak (the offline default) does not speak: {espeak.get('error')}", INSTALL))
    elif espeak["samples"]:
        found.append(ok(f"TTS espeak: {len(espeak['voices'])} voices, speaks offline"))
    else:
        found.append(fail("TTS espeak: loads but produced no audio for a test word", INSTALL))
    if ctx.env.get("EDGETTS_PROXY"):
        found.append(info("TTS edge-tts: goes through EDGETTS_PROXY; not probed"))
        return found
    why = _reachable(EDGE_TTS_HOST, 443)
    if why is None:
        found.append(ok(f"TTS edge-tts: {EDGE_TTS_HOST} reachable"))
    elif "edgetts" in ctx.tts_used:
        found.append(warn(f"TTS edge-tts needs the internet ({why}); avatars using edgeTTS will not speak",
                          "open the network (or set EDGETTS_PROXY), or set their tts_model to espeak"))
    else:
        found.append(info(f"TTS edge-tts needs the internet ({why}); espeak works offline"))
    return found


def check_weights(ctx: Context) -> list[Finding]:
    folder = weights.models_dir(ctx.env).resolve()
    where = f"MODELS_DIR={folder}"
    absent = weights.missing(folder)
    if absent:
        return [warn(f"MuseTalk weights not found at {where} (missing {', '.join(absent)}); only the puppet "
                     "engine can run", f"run '{weights.DOWNLOAD_COMMAND}' where there is internet, or set MODELS_DIR")]
    if weights.missing(folder, weights.OPTIONAL):
        return [ok(f"MuseTalk weights at {where}"),
                info(f"no face-parsing weights ({weights.FACE_PARSING}/ at {where}): musetalk avatars are "
                     "blended through an ellipse in a Haar face box instead of MuseTalk's own mask and box; "
                     f"'{weights.DOWNLOAD_COMMAND}' fetches them")]
    return [ok(f"MuseTalk weights at {where}, with face parsing")]


# --- running -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], list[Finding]]
    needs: str = ""  # "settings" or "store": skipped without it


CHECKS = [
    Check("configuration", check_configuration),
    Check("TTS configuration", check_tts_configuration, "settings"),
    Check("dependencies", check_dependencies),
    Check("log dir", check_log_dir, "settings"),
    Check("store", check_store, "settings"),
    Check("supervisor", check_supervisor, "store"),
    Check("GPUs", check_gpus, "settings"),
    Check("ports", check_ports, "settings"),
    Check("avatars", check_avatars, "settings"),
    Check("TTS voices", check_voices),
    Check("engine weights", check_weights),
]


def run_check(check: Check, ctx: Context) -> list[Finding]:
    """The check's findings; a crash or a hang is a finding too, never an escape."""
    found: list[Finding] = []

    def target() -> None:
        try:
            found.extend(check.run(ctx))
        except ImportError as exc:
            found.append(fail(f"{check.name}: cannot import {exc.name or exc}", INSTALL))
        except Exception as exc:
            found.append(fail(f"{check.name}: the check failed: {type(exc).__name__}: {exc}",
                              "fix what it names, or report this as a bug"))

    thread = threading.Thread(target=target, name=f"doctor-{check.name}", daemon=True)
    thread.start()
    thread.join(CHECK_TIMEOUT)
    if thread.is_alive():
        ctx.hung = True
        return list(found) + [fail(f"{check.name}: no answer within {CHECK_TIMEOUT:g} s",
                                   "something it probes hangs (disk, store, network); check those by hand")]
    return found


def line(finding: Finding) -> str:
    level, what, fix = finding
    return f"{LABELS[level]} {what}" + (f" — {fix}" if fix else "")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv:
        print(f"usage: python -m avatar_manager doctor (no arguments; got {' '.join(argv)})", file=sys.stderr)
        return 2
    logging.getLogger().addHandler(logging.NullHandler())  # the findings say it all
    ctx = Context(env=dict(os.environ))
    print(f"avatar_manager doctor on {platform.node()}: Python {platform.python_version()} ({sys.executable})",
          flush=True)
    counts: Counter = Counter()
    skipped = []
    for check in CHECKS:
        if (check.needs == "settings" and ctx.settings is None) or (check.needs == "store" and ctx.store is None):
            skipped.append(check.name)
            continue
        for finding in run_check(check, ctx):
            counts[finding[0]] += 1
            print(line(finding), flush=True)
    if skipped:
        print(line(info(f"not checked until the fails above are fixed: {', '.join(skipped)}")), flush=True)
    if ctx.store is not None and not ctx.hung:
        ctx.store.close()
    verdict = "fix the fail lines, then run it again" if counts[FAIL] else "ready to start (./start.sh)"
    print(f"doctor: {counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail — {verdict}", flush=True)
    code = 1 if counts[FAIL] else 0
    if ctx.hung:
        os._exit(code)  # a hung check's thread must not hold the exit
    return code
