"""`python -m avatar_manager doctor` as an operator runs it: a real subprocess on a temp setup,
judged by its lines and its exit status. The only double is a fake NVML (no GPU here)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.ports import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent
# Settings the outer environment must not leak into a run.
SETTINGS = ("AVATAR_DATA_DIR", "AVATAR_MANAGER_HOST", "AVATAR_MANAGER_PORT", "AVATAR_BASE_PORT", "MAX_AVATARS",
            "LOG_DIR", "REDIS_URL", "GPU_IDS", "GPU_MIN_FREE_MB", "API_TOKEN", "MODELS_DIR",
            "EDGETTS_PROXY", "PYTHONPATH", "FAKE_NVML", "ASR_URL", "WHISPER_MODEL")

FAKE_NVML_DIR = ROOT / "tests" / "fake_nvml"
TWO_GPUS = {"gpus": [{"name": "Fake A100", "total_mb": 40960, "free_mb": 30000},
                     {"name": "Fake T4", "total_mb": 16384, "free_mb": 2000}]}


class Run:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.lines = proc.stdout.splitlines()
        self.text = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"

    def level(self, level: str) -> list[str]:
        label = {"ok": "[ ok ]", "info": "[info]", "warn": "[warn]", "fail": "[fail]"}[level]
        return [line for line in self.lines if line.startswith(label)]

    def has(self, level: str, *words: str) -> bool:
        return any(all(w in line for w in words) for line in self.level(level))


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    return {**env, "AVATAR_DATA_DIR": str(tmp_path / "data"), "LOG_DIR": str(tmp_path / "logs"),
            "AVATAR_MANAGER_PORT": str(free_port()), "AVATAR_BASE_PORT": str(free_port_block(3)),
            "MAX_AVATARS": "3", "MODELS_DIR": str(tmp_path / "models")}


def doctor(env: dict[str, str], *args: str) -> Run:
    proc = subprocess.run([sys.executable, "-m", "avatar_manager", "doctor", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    return Run(proc)


def native_avatar(data_dir: Path, name: str, **config) -> Path:
    """A folder in the native format; doctor never decodes the pictures, so any bytes will do."""
    folder = data_dir / "avatars" / name
    (folder / "frames").mkdir(parents=True)
    (folder / "frames" / "000000.png").write_bytes(b"not decoded by doctor")
    (folder / "regions.json").write_text(json.dumps([{"face": [0, 0, 10, 10], "mouth": [2, 6, 8, 9]}]))
    (folder / "config.json").write_text(json.dumps({"format": 1, "kind": "image", "frame_count": 1, **config}))
    return folder


def test_a_clean_setup_passes_with_a_warning_for_no_avatars(tmp_path):
    run = doctor(base_env(tmp_path))
    assert run.code == 0, run.text
    assert not run.level("fail"), run.text
    assert run.has("ok", "configuration:", str(tmp_path / "data")), run.text
    assert run.has("ok", "store: SQLite", str(tmp_path / "data" / "manager.sqlite3")), run.text
    for package in ("flask", "gunicorn", "redis", "aiortc", "cv2", "numpy", "espeakng_loader"):
        assert run.has("ok", f"package {package} "), run.text
    assert run.has("warn", "avatars: none", "./start.sh prepares a demo avatar"), run.text
    assert run.has("warn", "no manager running"), run.text
    assert run.has("ok", "TTS espeak", "voices"), run.text
    assert run.has("warn", "MuseTalk weights not found", "only the puppet engine can run"), run.text
    assert run.has("ok", "log dir"), run.text
    assert run.lines[-1].startswith("doctor: ") and "0 fail" in run.lines[-1], run.text
    for line in run.level("warn"):
        assert " — " in line, f"a warning without a fix: {line}"


def test_a_bad_setting_fails_naming_the_variable(tmp_path):
    run = doctor({**base_env(tmp_path), "MAX_AVATARS": "abc"})
    assert run.code == 1, run.text
    assert run.has("fail", "configuration", "MAX_AVATARS"), run.text
    assert run.has("info", "not checked", "store"), run.text
    assert run.has("ok", "package flask"), run.text  # what needs no settings is still checked
    assert "1 fail" in run.lines[-1], run.text


def test_a_redis_url_nobody_answers_fails_the_store_without_showing_the_password(tmp_path):
    port = free_port()
    run = doctor({**base_env(tmp_path), "REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"})
    assert run.code == 1, run.text
    assert run.has("fail", "store", f"127.0.0.1:{port}", "redis-server"), run.text
    assert "hunter2" not in run.text
    assert run.has("info", "not checked", "supervisor"), run.text


def test_a_real_redis_is_an_ok_store(tmp_path, redis_url):
    run = doctor({**base_env(tmp_path), "REDIS_URL": redis_url})
    assert run.code == 0, run.text
    assert run.has("ok", "store: Redis", redis_url.split("://")[1]), run.text


def test_avatars_are_checked_one_by_one(tmp_path):
    env = base_env(tmp_path)
    data = tmp_path / "data"
    native_avatar(data, "good", timbre="FemaleA")
    native_avatar(data, "broken")
    (data / "avatars" / "broken" / "config.json").write_text("{not json")
    (native_avatar(data, "noregions") / "regions.json").unlink()
    native_avatar(data, "badtts", tts_model="nosuchvoice")
    native_avatar(data, "muse", avatar_model="musetalk")
    native_avatar(data, "hoarse", timbre="NoSuchTimbre")
    native_avatar(data, "deaf", asr_model="whisper", language="fa")
    native_avatar(data, "cloud", asr_model="openai")
    native_avatar(data, "babel", language="Babel")
    run = doctor(env)
    assert run.code == 1, run.text
    assert run.has("ok", "avatar good:", "puppet", "espeak", "FemaleA", "sphinx ASR (en)"), run.text
    assert run.has("warn", "avatar deaf:", "no whisper weights", str(tmp_path / "models"), "download-models"), run.text
    assert run.has("warn", "avatar cloud:", "ASR_URL is not set"), run.text
    assert run.has("fail", "avatar babel:", "language 'Babel'"), run.text
    assert run.has("fail", "avatar broken:", "prepare"), run.text
    assert run.has("fail", "avatar noregions:", "regions.json"), run.text
    assert run.has("fail", "avatar badtts:", "nosuchvoice"), run.text
    assert run.has("fail", "avatar muse:", "no MuseTalk weights", "download-models"), run.text
    assert run.has("warn", "avatar hoarse:", "NoSuchTimbre"), run.text
    assert not run.has("warn", "avatars: none"), run.text


def test_a_busy_avatar_port_is_a_warning_naming_it(tmp_path):
    env = base_env(tmp_path)
    base = int(env["AVATAR_BASE_PORT"])
    with socket.socket() as held:
        held.bind(("127.0.0.1", base + 1))
        held.listen()
        run = doctor(env)
        assert run.code == 0, run.text
        assert run.has("warn", "avatar ports", "1 of 3 busy", str(base + 1)), run.text
        run = doctor({**env, "AVATAR_BASE_PORT": str(base + 1), "MAX_AVATARS": "1"})
    assert run.code == 1, run.text  # the only avatar port is taken: nothing could start
    assert run.has("fail", "avatar ports", str(base + 1)), run.text


def test_a_manager_port_held_by_something_else_fails(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        run = doctor({**base_env(tmp_path), "AVATAR_MANAGER_PORT": str(port)})
    assert run.code == 1, run.text
    assert run.has("fail", f"manager port {port}", "AVATAR_MANAGER_PORT"), run.text


def test_a_running_manager_is_recognised(manager):
    m = manager()
    run = doctor({**m.env})
    assert run.code == 0, run.text
    assert run.has("ok", f"manager port {m.port}", "a manager already runs there"), run.text
    assert run.has("ok", "supervisor", "running"), run.text
    assert not run.has("warn", "avatar ports"), run.text


def test_gpus_are_listed_with_their_memory(tmp_path):
    env = {**base_env(tmp_path), "PYTHONPATH": str(FAKE_NVML_DIR), "FAKE_NVML": json.dumps(TWO_GPUS),
           "GPU_IDS": "1,0,5", "GPU_MIN_FREE_MB": "6000"}
    run = doctor(env)
    assert run.code == 0, run.text
    assert run.has("ok", "GPU 0 Fake A100", "30000 of 40960 MB free"), run.text
    assert run.has("warn", "GPU 1 Fake T4", "2000 of 16384 MB free", "GPU_MIN_FREE_MB"), run.text
    assert run.has("warn", "GPU_IDS", "GPU 5"), run.text
    assert not run.has("warn", "GPUs: none"), run.text


def test_without_nvml_instances_run_on_the_cpu(tmp_path):
    run = doctor({**base_env(tmp_path), "PYTHONPATH": str(FAKE_NVML_DIR), "FAKE_NVML": '{"error": "driver"}'})
    assert run.code == 0, run.text
    assert run.has("warn", "GPUs: none", "Driver Not Loaded", "instances run on the CPU"), run.text


def test_whisper_weights_in_place_are_found(tmp_path):
    env = base_env(tmp_path)
    native_avatar(tmp_path / "data", "ears", asr_model="whisper")
    size = Path(env["MODELS_DIR"]) / "whisper" / "tiny"
    size.mkdir(parents=True)
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.json"):
        (size / name).write_text("{}")
    assert doctor(env).has("warn", "avatar ears:", "no whisper weights")
    run = doctor({**env, "WHISPER_MODEL": "tiny"})
    assert run.has("ok", "avatar ears:", "whisper ASR") and not run.has("warn", "avatar ears:"), run.text


def test_musetalk_weights_in_place_are_found(tmp_path):
    env = base_env(tmp_path)
    models = Path(env["MODELS_DIR"])
    for name in ("musetalkV15/musetalk.json", "musetalkV15/unet.pth", "sd-vae/config.json",
                 "sd-vae/diffusion_pytorch_model.bin", "whisper/config.json", "whisper/preprocessor_config.json",
                 "whisper/model.safetensors"):
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).write_text("{}")
    run = doctor(env)
    assert run.has("ok", "MuseTalk weights at", f"MODELS_DIR={models}"), run.text
    assert run.has("info", "no face-parsing weights", "ellipse", "download-models"), run.text
    (models / "face-parse-bisent").mkdir()
    (models / "face-parse-bisent" / "79999_iter.pth").write_text("{}")
    run = doctor(env)
    assert run.has("ok", "MuseTalk weights at", "with face parsing") and not run.has("info", "face-parsing"), run.text
    (models / "musetalkV15" / "unet.pth").unlink()
    run = doctor(env)
    assert run.has("warn", "MuseTalk weights not found", "musetalkV15/unet.pth", "download-models"), run.text


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--bogus"], 2)])
def test_arguments(tmp_path, args, code):
    run = doctor(base_env(tmp_path), *args)
    assert run.code == code, run.text


def test_a_hanging_check_is_a_fail_and_the_run_still_ends(tmp_path):
    code = ("import sys, time, avatar_manager.doctor as d\n"
            "d.CHECK_TIMEOUT = 0.5\n"
            "d.CHECKS = [d.Check('configuration', d.check_configuration),\n"
            "            d.Check('stuck', lambda ctx: time.sleep(3600) or [])]\n"
            "sys.exit(d.main([]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    run = Run(proc)
    assert run.code == 1, run.text
    assert run.has("fail", "stuck: no answer within 0.5 s"), run.text
    assert run.lines[-1].startswith("doctor: ") and "1 fail" in run.lines[-1], run.text
