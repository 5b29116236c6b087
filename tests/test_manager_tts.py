"""Lazy TTS: the first avatar that needs a voice model gets that model's server started."""
from __future__ import annotations

import requests

from harness.processes import gone, wait_for


def _health(port: int) -> dict | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
    except requests.RequestException:
        return None


def test_a_worker_gets_its_tts_server_started_and_stopped_with_the_manager(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("anna", tts_model="EdgeTTS", timbre="FemaleA")
    port = m.tts_port("edgetts")
    assert _health(port) is None, "something already serves edgetts on its port"
    answer = m.start_avatar("anna_user_1")
    assert answer.status_code == 200, answer.text
    assert _health(port)["model"] == "edgetts"
    tts_pids = [c.pid for c in m.tree() if "tts_services" in " ".join(c.cmdline())]
    assert len(tts_pids) == 1
    worker = requests.get(f"http://127.0.0.1:{answer.json()['data']['port']}/health", timeout=2).json()
    argv = worker["argv"]
    assert {"--tts=edgetts", f"--TTS_SERVER=http://127.0.0.1:{port}", "--REF_FILE=FemaleA"} <= set(argv)

    # A second avatar on the same model uses the same server.
    m.avatar("bert", tts_model="edge-tts")
    assert m.start_avatar("bert_user_1").status_code == 200
    assert [c.pid for c in m.tree() if "tts_services" in " ".join(c.cmdline())] == tts_pids

    m.stop()
    assert gone(tts_pids[0])
    assert _health(port) is None


def test_an_unknown_tts_model_is_refused_before_anything_starts(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("odd", tts_model="festival")
    answer = m.start_avatar("odd")
    assert answer.status_code == 400
    assert "unknown TTS model 'festival'" in answer.json()["message"]
    assert m.get("/avatar/list").json()["count"] == 0
    assert not list(m.log_dir.glob("avatar_*.log"))


def test_a_dead_tts_server_is_started_again_and_an_orphaned_one_adopted(manager):
    m = manager(WORKER_MODULE="tests.fake_worker")
    m.avatar("anna")  # espeak, the offline default
    assert m.start_avatar("anna").status_code == 200
    port = m.tts_port("espeak")
    first = next(c for c in m.tree() if "tts_services" in " ".join(c.cmdline()))
    first.kill()
    wait_for(lambda: (h := _health(port)) and h["model"] == "espeak"
             and any("tts_services" in " ".join(c.cmdline()) and c.pid != first.pid for c in m.tree()),
             what="the TTS server started again")

    # The manager is SIGKILLed: its TTS server and worker live on; the next manager owns them,
    # so its SIGTERM stops them too.
    tts = next(c for c in m.tree() if "tts_services" in " ".join(c.cmdline()))
    m.kill()
    assert tts.is_running()
    again = manager(start=False, WORKER_MODULE="tests.fake_worker", **m.same_ports())
    again.start()
    assert _health(port)["model"] == "espeak"
    again.stop()
    wait_for(lambda: gone(tts.pid), what="the adopted server stopped")
