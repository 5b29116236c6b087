"""Speech recognition: the host agent starts the avatar's ASR server before its worker, one per
model, and a server that cannot start does not keep the worker from starting."""
from __future__ import annotations

import psutil
import requests

from harness.processes import gone, wait_for


def _health(port: int) -> dict | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
    except requests.RequestException:
        return None


def _asr_servers(m) -> list[psutil.Process]:
    return [c for c in m.tree() if "asr_services" in " ".join(c.cmdline())]


def _argv(worker: dict) -> set[str]:
    return set(psutil.Process(worker["pid"]).cmdline())


def test_a_worker_gets_its_asr_server_started_first_and_shares_it(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    assert "sphinx" in m.get("/console/config").json()["data"]["asr_models"]
    m.avatar("anna")  # sphinx and en, the defaults
    port = m.asr_port("sphinx")
    assert _health(port) is None, "something already serves sphinx on its port"
    answer = m.start_avatar("anna_user_1")
    assert answer.status_code == 200, answer.text
    anna = answer.json()["data"]
    assert _health(port)["model"] == "sphinx"
    (server,) = _asr_servers(m)
    assert server.create_time() < psutil.Process(anna["pid"]).create_time()
    assert {f"--ASR_SERVER=http://127.0.0.1:{port}", "--language=en"} <= _argv(anna)

    # A second avatar on the same model, in another language, uses the same server.
    m.avatar("bert", asr_model="PocketSphinx", language="fa")
    bert = m.start_avatar("bert_user_1")
    assert bert.status_code == 200, bert.text
    assert {f"--ASR_SERVER=http://127.0.0.1:{port}", "--language=fa"} <= _argv(bert.json()["data"])
    assert [p.pid for p in _asr_servers(m)] == [server.pid]

    m.stop()
    assert gone(server.pid)
    assert _health(port) is None


def test_an_asr_server_that_cannot_start_leaves_the_worker_without_speech_recognition(manager, tmp_path):
    m = manager(WORKER_MODULE="tests.fake_worker", MODELS_DIR=str(tmp_path / "no-models"))
    m.avatar("wendy", asr_model="faster-whisper")
    answer = m.start_avatar("wendy")
    assert answer.status_code == 200, answer.text
    port = m.asr_port("whisper")
    assert f"--ASR_SERVER=http://127.0.0.1:{port}" in _argv(answer.json()["data"])
    failed = "the whisper ASR server exited with code 2"
    log = wait_for(lambda: failed in (text := (m.log_dir / "manager.log").read_text()) and text,
                   what="the whisper ASR server's failure in the manager's log")
    why = log.split(failed, 1)[1]  # its log's tail, then what the workers do meanwhile
    assert "download-models" in why and "without speech recognition" in why, why
    assert (m.log_dir / f"asr_whisper_{port}.log").is_file()
    assert _asr_servers(m) == [] and _health(port) is None


def test_a_bad_asr_model_or_language_in_a_config_is_refused_before_anything_starts(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("odd", asr_model="kaldi")
    m.avatar("mute", language="english please")
    model = m.start_avatar("odd")
    assert model.status_code == 400 and "unknown ASR model 'kaldi'" in model.json()["message"]
    language = m.start_avatar("mute")
    assert language.status_code == 400 and "'english please'" in language.json()["message"]
    assert m.get("/avatar/list").json()["count"] == 0
    assert not list(m.log_dir.glob("avatar_*.log")) and _asr_servers(m) == []
