"""edge-tts needs Microsoft's service; without it the server must fail fast and say why."""
import time

import pytest
import requests

from harness.ports import free_port


@pytest.fixture
def unreachable_edge(tts_server):
    # A proxy on a closed local port makes the service unreachable whatever this machine's network.
    return tts_server("EdgeTTS", EDGETTS_PROXY=f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("voice", ["FemaleA", "ChineseMaleB", "fa-IR-DilaraNeural", "de-DE-KatjaNeural", None])
def test_unreachable_service_is_a_fast_clear_503(unreachable_edge, voice):
    for path in ("/tts", "/tts/events"):
        t0 = time.monotonic()
        response = requests.post(unreachable_edge.url + path,
                                 json={"text": "Hello there.", **({"voice": voice} if voice else {})}, timeout=10)
        assert time.monotonic() - t0 < 2.0
        assert response.status_code == 503
        assert "edge-tts cannot reach Microsoft's speech service (it needs the internet)" in response.json()["message"]


def test_this_machines_network_gives_503_or_real_speech(tts_server):
    """The plain path, no proxy: offline (CI) it fails fast; online it speaks."""
    server = tts_server("edge")
    t0 = time.monotonic()
    response = requests.post(server.url + "/tts", json={"text": "Hello there."}, timeout=15)
    if response.status_code == 503:
        assert time.monotonic() - t0 < 2.5
        assert "needs the internet" in response.json()["message"]
    else:
        assert response.status_code == 200 and len(response.content) > 16000


def test_unknown_voice_is_refused_before_any_network(unreachable_edge):
    response = requests.post(unreachable_edge.url + "/tts", json={"text": "hi", "voice": "FemaleZ"}, timeout=5)
    assert response.status_code == 400
    assert "FemaleA" in response.json()["message"] and "fa-IR-FaridNeural" in response.json()["message"]


def test_voices_map_the_existing_timbre_names(unreachable_edge):
    voices = {v["name"]: v for v in requests.get(unreachable_edge.url + "/voices", timeout=5).json()["voices"]}
    assert voices["Default"]["description"] == "en-US-BrianNeural"
    assert voices["FemaleB"]["description"] == "en-US-JennyMultilingualNeural"
    assert voices["MaleF"]["description"] == "en-US-SteffanNeural"
    assert voices["ChineseMaleC"]["description"] == "zh-CN-YunxiNeural"
    assert voices["ChineseFemaleB"]["description"] == "zh-CN-XiaoyiNeural"
    assert voices["fa-IR-FaridNeural"]["lang"] == "fa"
