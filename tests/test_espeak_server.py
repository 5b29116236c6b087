"""The offline espeak server, as a real subprocess, over HTTP."""
import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from audio_checks import rms, seconds
from conftest import Server, tts_argv

ENGLISH = "The quick brown fox jumps over the lazy dog."
PERSIAN = "امروز هوا بسیار خوب است و ما به پارک می‌رویم."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the tests of this module, with a text limit small enough to test."""
    srv = Server(tts_argv("espeak"), tmp_path_factory.mktemp("espeak") / "server.log", {"TTS_MAX_TEXT_CHARS": "300"})
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def speak(server, **body) -> requests.Response:
    return requests.post(server.url + "/tts", json=body, timeout=10)


def events(server, **body) -> list[dict]:
    response = requests.post(server.url + "/tts/events", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.parametrize("text, lang", [(ENGLISH, "en"), (PERSIAN, "fa"), (PERSIAN, None)])
def test_speaks_english_and_persian_with_plausible_length(server, text, lang):
    response = speak(server, text=text, **({"lang": lang} if lang else {}))
    assert response.status_code == 200, response.text
    assert response.headers["X-Audio-Format"] == "s16le; rate=16000; channels=1"
    # Normal speech is 8 to 25 characters per second.
    assert len(text) / 25 < seconds(response.content) < len(text) / 8
    assert rms(response.content) > 500, "audio is silent"


def test_numbers_are_spoken_as_words(server):
    digits = seconds(speak(server, text="1987654").content)
    one_word = seconds(speak(server, text="seven").content)
    assert digits > 4 * one_word  # "one million, nine hundred and eighty-seven thousand, ..."


def test_streams_one_chunk_per_sentence_with_phonemes(server):
    text = "First sentence here. Then a second one! And a third?"
    got = events(server, text=text, voice="en-us")
    audio = [e for e in got if e["type"] == "audio"]
    assert len(audio) == 3
    assert got[-1]["type"] == "end"
    starts = [e["start"] for e in audio]
    assert starts == sorted(starts) and starts[0] == 0
    total = sum(seconds(base64.b64decode(e["pcm"])) for e in audio)
    assert got[-1]["seconds"] == pytest.approx(total, abs=1e-3)
    phonemes = [p for e in audio for p in e["phonemes"]]
    assert len(phonemes) > 20
    assert all(start <= end <= total + 0.05 for start, end, _ in phonemes)
    assert [p[0] for p in phonemes] == sorted(p[0] for p in phonemes)
    # The same speech arrives as raw PCM on /tts.
    raw = speak(server, text=text, voice="en-us").content
    assert seconds(raw) == pytest.approx(total, abs=1e-3)


def test_persian_phonemes_are_ipa(server):
    audio = [e for e in events(server, text="سلام") if e["type"] == "audio"]
    symbols = "".join(p[2] for e in audio for p in e["phonemes"])
    assert "s" in symbols and "l" in symbols and "m" in symbols


def test_timbre_names_choose_different_voices(server):
    female = speak(server, text="Hello, how are you?", voice="FemaleA").content
    male = speak(server, text="Hello, how are you?", voice="MaleA").content
    assert female != male and rms(female) > 500 and rms(male) > 500


def test_concurrent_requests_are_all_answered(server):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: speak(server, text=f"Request number {i}."), range(16)))
    assert all(r.status_code == 200 and seconds(r.content) > 0.5 for r in results)


@pytest.mark.parametrize("body, message", [
    ({"text": ""}, "text must be a non-empty string"),
    ({"text": "   "}, "text must be a non-empty string"),
    ({"text": 42}, "text must be a non-empty string"),
    ({}, "text must be a non-empty string"),
    ({"text": "x" * 301}, "the limit is 300"),
    ({"text": "hi", "voice": "Nobody"}, "allowed: ChineseFemaleA"),
    ({"text": "hi", "voice": 7}, "unknown voice 7"),
    ({"text": "hi", "lang": "de"}, "allowed: en, fa, zh"),
    ({"text": "hi", "lang": "../../etc"}, "lang must be a language code"),
    (["text", "hi"], "body must be a JSON object"),
])
def test_bad_input_is_a_400_naming_what_is_allowed(server, body, message):
    for path in ("/tts", "/tts/events"):
        response = requests.post(server.url + path, json=body, timeout=5)
        assert response.status_code == 400
        assert response.json()["status"] == "error"
        assert message in response.json()["message"]


def test_non_json_and_oversized_bodies_are_refused(server):
    response = requests.post(server.url + "/tts", data=b"text=hello", timeout=5)
    assert response.status_code == 400 and "body must be JSON" in response.json()["message"]
    response = requests.post(server.url + "/tts", data=b"{" + b" " * 100_000 + b"}", timeout=5)
    assert response.status_code == 413 and "larger than" in response.json()["message"]


def test_a_listener_hanging_up_midway_is_counted_and_harmless(tts_server):
    server = tts_server()
    # ~100 s of audio, megabytes more than the socket buffers hold: the server is mid-stream.
    response = requests.post(server.url + "/tts", json={"text": "Hello there. " * 150}, stream=True, timeout=10)
    next(response.iter_content(1000))
    response.close()
    deadline = time.monotonic() + 5
    while 'outcome="client_gone"' not in requests.get(server.url + "/metrics", timeout=5).text:
        assert time.monotonic() < deadline, "the hang-up was not noticed"
        time.sleep(0.05)
    assert "Error handling request" not in server.log.read_text()
    assert speak(server, text="Still here.").status_code == 200


def test_voices_health_and_metrics(server):
    voices = requests.get(server.url + "/voices", timeout=5).json()
    assert voices["model"] == "espeak" and voices["default"] == "en-us"
    assert {"en", "fa"} <= set(voices["languages"])
    assert {"fa", "FemaleA"} <= {v["name"] for v in voices["voices"]}
    assert requests.get(server.url + "/health", timeout=5).json()["model"] == "espeak"
    speak(server, text="Count me.")
    speak(server, text="")
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert 'tts_requests_total{model="espeak",outcome="ok"}' in metrics
    assert 'tts_requests_total{model="espeak",outcome="bad_request"}' in metrics
    assert "tts_first_audio_seconds_bucket" in metrics
