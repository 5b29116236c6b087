"""Each bridge against a local server speaking its upstream's wire format (tests/upstreams.py)."""
import os
import subprocess
import sys
import time

import pytest
import requests

from audio_checks import dominant_hz, seconds
from conftest import ROOT
from harness.ports import free_port
from upstreams import TONE_HZ, TONE_SECONDS_PER_CHAR

TEXT = "Bridges carry our words."


def expected_seconds(text: str) -> float:
    return len(text) * TONE_SECONDS_PER_CHAR


def assert_tone(pcm: bytes, text: str) -> None:
    assert seconds(pcm) == pytest.approx(expected_seconds(text), abs=0.02)
    assert dominant_hz(pcm) == pytest.approx(TONE_HZ, abs=5)


@pytest.fixture
def prompt_wav(tmp_path):
    path = tmp_path / "prompt.wav"
    path.write_bytes(b"RIFF" + b"\0" * 1000)
    return path


def bridge(tts_server, kind, upstream_url, prompt_wav=None):
    env = {
        "sovits": {"SOVITS_URL": upstream_url, "SOVITS_REF_AUDIO": "/refs/alice.wav",
                   "SOVITS_REF_TEXT": "Hello, I am Alice.", "SOVITS_REF_LANG": "en"},
        "cosyvoice": {"COSYVOICE_URL": upstream_url, "COSYVOICE_REF_AUDIO": str(prompt_wav),
                      "COSYVOICE_REF_TEXT": "Prompt words."},
        "cosyvoice-sft": {"COSYVOICE_URL": upstream_url, "COSYVOICE_SPK_ID": "english_female"},
        "tacotron": {"TACOTRON_URL": upstream_url, "TACOTRON_SPEAKER": "p225"},
    }[kind]
    return tts_server({"cosyvoice-sft": "CosyVoice2", "sovits": "GPT-SoVITS"}.get(kind, kind), **env)


def test_sovits_streams_resampled_wav(tts_server, upstream):
    up = upstream("sovits")                                    # 32 kHz, like GPT-SoVITS v2
    server = bridge(tts_server, "sovits", up.url)
    response = requests.post(server.url + "/tts", json={"text": TEXT, "lang": "en"}, timeout=10)
    assert response.status_code == 200, response.text
    assert_tone(response.content, TEXT)
    sent = requests.get(up.url + "/last", timeout=5).json()
    assert sent == {"text": TEXT, "text_lang": "en", "ref_audio_path": "/refs/alice.wav",
                    "prompt_text": "Hello, I am Alice.", "prompt_lang": "en",
                    "media_type": "wav", "streaming_mode": True}


@pytest.mark.parametrize("rate", [22050, 24000])
def test_cosyvoice_zero_shot_uploads_the_prompt_and_resamples(tts_server, upstream, prompt_wav, rate):
    up = upstream("cosyvoice", "--rate", str(rate))
    server = tts_server("cosyvoice", COSYVOICE_URL=up.url, COSYVOICE_REF_AUDIO=str(prompt_wav),
                        COSYVOICE_REF_TEXT="Prompt words.", COSYVOICE_SAMPLE_RATE=str(rate))
    response = requests.post(server.url + "/tts", json={"text": TEXT}, timeout=10)
    assert response.status_code == 200, response.text
    assert_tone(response.content, TEXT)
    sent = requests.get(up.url + "/last", timeout=5).json()
    assert sent["route"] == "/inference_zero_shot"
    assert sent["tts_text"] == TEXT and sent["prompt_text"] == "Prompt words."
    assert sent["prompt_wav"]["size"] == prompt_wav.stat().st_size


def test_cosyvoice_sft_uses_the_builtin_speaker(tts_server, upstream):
    up = upstream("cosyvoice")
    server = bridge(tts_server, "cosyvoice-sft", up.url)
    response = requests.post(server.url + "/tts", json={"text": TEXT}, timeout=10)
    assert_tone(response.content, TEXT)
    sent = requests.get(up.url + "/last", timeout=5).json()
    assert sent == {"route": "/inference_sft", "tts_text": TEXT, "spk_id": "english_female"}


def test_tacotron_asks_sentence_by_sentence(tts_server, upstream):
    up = upstream("coqui")                                     # 22.05 kHz, like tacotron2-DDC
    server = bridge(tts_server, "tacotron", up.url)
    text = "First sentence. Second one."
    events = requests.post(server.url + "/tts/events", json={"text": text}, timeout=10).text.splitlines()
    assert sum('"type": "audio"' in e for e in events) >= 2    # the first arrives before the second is asked
    response = requests.post(server.url + "/tts", json={"text": text}, timeout=10)
    assert seconds(response.content) == pytest.approx(
        expected_seconds("First sentence.") + expected_seconds("Second one."), abs=0.03)
    assert requests.get(up.url + "/last", timeout=5).json() == {"text": "Second one.", "speaker_id": "p225"}


@pytest.mark.parametrize("kind", ["sovits", "cosyvoice", "tacotron"])
def test_upstream_down_is_a_fast_503_naming_it(tts_server, prompt_wav, kind):
    server = bridge(tts_server, kind, f"http://127.0.0.1:{free_port()}", prompt_wav)
    t0 = time.monotonic()
    response = requests.post(server.url + "/tts", json={"text": TEXT}, timeout=10)
    assert time.monotonic() - t0 < 2
    assert response.status_code == 503
    assert "cannot reach" in response.json()["message"] and "127.0.0.1" in response.json()["message"]


@pytest.mark.parametrize("kind, upstream_kind, says", [
    ("sovits", "sovits", "CUDA out of memory"),
    ("cosyvoice", "cosyvoice", "answered 500"),
    ("tacotron", "coqui", "answered 500"),
])
def test_upstream_errors_are_503_with_its_message(tts_server, upstream, prompt_wav, kind, upstream_kind, says):
    up = upstream(upstream_kind, "--mode", "error")
    server = bridge(tts_server, kind, up.url, prompt_wav)
    response = requests.post(server.url + "/tts", json={"text": TEXT}, timeout=10)
    assert response.status_code == 503 and says in response.json()["message"]


def test_a_hung_upstream_times_out(tts_server, upstream):
    up = upstream("sovits", "--mode", "hang")
    server = tts_server("sovits", SOVITS_URL=up.url, SOVITS_REF_AUDIO="/r.wav", TTS_READ_TIMEOUT="1")
    t0 = time.monotonic()
    response = requests.post(server.url + "/tts", json={"text": TEXT}, timeout=10)
    assert 0.9 < time.monotonic() - t0 < 3
    assert response.status_code == 503


def test_a_stream_cut_midway_is_reported_not_passed_off_as_complete(tts_server, upstream):
    up = upstream("sovits", "--mode", "cut")
    server = tts_server("sovits", SOVITS_URL=up.url, SOVITS_REF_AUDIO="/r.wav")
    lines = requests.post(server.url + "/tts/events", json={"text": TEXT * 4}, timeout=10).text.splitlines()
    assert '"type": "audio"' in lines[0]
    assert '"type": "error"' in lines[-1] and not any('"type": "end"' in line for line in lines)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _ = requests.post(server.url + "/tts", json={"text": TEXT * 4}, timeout=10).content  # reads the body


@pytest.mark.parametrize("model, env, says", [
    ("sovits", {}, "sovits needs SOVITS_REF_AUDIO"),
    ("cosyvoice", {}, "cosyvoice needs COSYVOICE_REF_AUDIO"),
    ("cosyvoice", {"COSYVOICE_REF_AUDIO": "/no/such.wav"}, "is not a readable file"),
    ("tacotron", {}, "tacotron needs TACOTRON_URL"),
    ("tacotron", {"TACOTRON_URL": "ftp://x"}, "is not an http(s) URL"),
    ("espeak", {"TTS_MAX_TEXT_CHARS": "many"}, "TTS_MAX_TEXT_CHARS='many' is not a number"),
    ("festival", {}, "unknown TTS model 'festival'"),
])
def test_missing_configuration_stops_the_server_with_one_line(model, env, says):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SOVITS_", "COSYVOICE_", "TACOTRON_", "TTS_"))}
    result = subprocess.run([sys.executable, "-m", "tts_services", "--model", model, "--port", str(free_port())],
                            cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
