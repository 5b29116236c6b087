"""The ASR servers as real subprocesses, through the client the worker uses and through raw
sockets: sphinx hearing espeak's speech, whisper with a tiny random model converted the way real
ones are, openai against a local stand-in for OpenAI's transcription API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import requests

from asr_services.client import ASRClient, ASRError
from conftest import ROOT, Server, asr_argv, run
from harness.ports import free_port
from harness.speech import espeak_pcm_now
from upstreams import TRANSCRIPT

# espeak's voice differs a little from one synthesis to the next; sphinx hears "weather" in this
# one every time, whatever its decoder heard before (most sentences come out right only sometimes).
SPEECH = "What is the weather like today?"
HEARD = "weather"
CHUNK = 640            # 20 ms of 16 kHz s16le
LIMIT_SECONDS = 2      # the sphinx server's ASR_MAX_UTTERANCE_SECONDS: SPEECH (1.5 s) fits, twice it does not
TOKEN = "asr-test-token"


@pytest.fixture(scope="module")
def speech() -> bytes:
    """SPEECH as 16 kHz s16le PCM, spoken by the offline espeak voice."""
    return espeak_pcm_now(SPEECH)


@pytest.fixture(scope="module")
def sphinx(tmp_path_factory):
    server = Server(asr_argv("sphinx"), tmp_path_factory.mktemp("sphinx") / "server.log",
                    {"ASR_MAX_UTTERANCE_SECONDS": str(LIMIT_SECONDS)})
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def asr_server(spawn, model: str, **env: str) -> Server:
    return spawn(asr_argv(model), env=env)


def pieces(pcm: bytes) -> list[bytes]:
    """20 ms pieces, as a microphone sends them."""
    return [pcm[start:start + CHUNK] for start in range(0, len(pcm), CHUNK)]


async def stream(client: ASRClient, pcm: bytes, language: str = "en") -> tuple[str, list[str]]:
    """The final and the partials of one utterance sent through the client in 20 ms pieces."""
    partials: list[str] = []
    async with client.utterance(language, partials.append) as utterance:
        for piece in pieces(pcm):
            await utterance.send(piece)
        return await utterance.finish(), partials


async def exchange(url: str, *messages, finals: int = 0, query: str = "language=en") -> tuple[list[dict], int | None]:
    """On a raw socket: send `messages` (bytes: binary; dict: JSON text; str: raw text), then read
    until `finals` finals came (0: until the server closes). What the server sent, and its close code."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url.replace('http', 'ws')}/asr?{query}") as ws:
            for message in messages:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                elif isinstance(message, dict):
                    await ws.send_json(message)
                else:
                    await ws.send_str(message)
            received: list[dict] = []
            while not finals or sum(event["type"] == "final" for event in received) < finals:
                message = await ws.receive(timeout=30)
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                received.append(json.loads(message.data))
            return received, ws.close_code


def metric(server: Server, line_start: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def refusal(env: dict, *argv: str) -> subprocess.CompletedProcess:
    """`python -m asr_services ARGV` run to its end: it is expected to stop at once."""
    done = subprocess.run([sys.executable, "-m", "asr_services", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})
    assert "Traceback" not in done.stderr, done.stderr
    return done


# --- sphinx ---------------------------------------------------------------------------------------


def test_sphinx_streams_partials_then_a_final_with_the_words(sphinx, speech):
    final, partials = run(stream(ASRClient(sphinx.url), speech))
    assert HEARD in final.split(), final
    assert len(partials) >= 2 and all(partials), partials   # the hypothesis grew as the audio came
    assert partials[-1] != partials[0]


def test_sphinx_transcribes_a_whole_utterance_over_http(sphinx, speech):
    assert HEARD in run(ASRClient(sphinx.url).transcribe(speech, "en")).split()
    answer = requests.post(sphinx.url + "/transcribe?language=en-US", data=speech,
                           headers={"Content-Type": "audio/L16; rate=16000; channels=1"}, timeout=10).json()
    assert answer["language"] == "en" and answer["seconds"] == pytest.approx(len(speech) / 32000, abs=1e-3)
    assert HEARD in answer["text"].split()


def test_one_socket_carries_utterance_after_utterance(sphinx, speech):
    events, _ = run(exchange(sphinx.url, *pieces(speech), {"type": "end"}, {"type": "end"}, *pieces(speech),
                             {"type": "end"}, finals=3))
    finals = [event for event in events if event["type"] == "final"]
    assert [f["reason"] for f in finals] == ["end"] * 3
    assert HEARD in finals[0]["text"].split() and HEARD in finals[2]["text"].split()
    assert finals[1] == {"type": "final", "text": "", "seconds": 0, "reason": "end"}   # an end with no audio
    assert finals[0]["seconds"] == pytest.approx(len(speech) / 32000, abs=1e-3)


def test_an_utterance_over_the_limit_is_ended_by_the_server(sphinx, speech):
    events, _ = run(exchange(sphinx.url, *pieces(speech + speech), {"type": "end"}, finals=2))
    finals = [event for event in events if event["type"] == "final"]
    assert [f["reason"] for f in finals] == ["limit", "end"]
    assert finals[0]["seconds"] == LIMIT_SECONDS
    assert finals[1]["seconds"] == pytest.approx(2 * len(speech) / 32000 - LIMIT_SECONDS, abs=1e-3)


def test_a_language_sphinx_lacks_is_refused_clearly(sphinx, speech):
    with pytest.raises(ASRError, match="sphinx model does not recognise 'fa'; it knows: en"):
        run(stream(ASRClient(sphinx.url), speech, "fa"))
    with pytest.raises(ASRError, match="answered 400: the sphinx model does not recognise 'fa'"):
        run(ASRClient(sphinx.url).transcribe(speech, "fa"))
    events, code = run(exchange(sphinx.url, query="language=fa"))
    assert events == [{"type": "error", "message": "the sphinx model does not recognise 'fa'; it knows: en"}]
    assert code == aiohttp.WSCloseCode.POLICY_VIOLATION


@pytest.mark.parametrize("message, code, said", [
    ("hello", 1008, "unknown message 'hello'"),
    ({"type": "start"}, 1008, "unknown message"),
    ("[1, 2", 1008, "unknown message"),
    (b"\x01\x02\x03", 1008, "whole 16-bit samples"),
    (bytes(64 * 1024 + 2), 1009, "the limit is 65536"),
])
def test_a_bad_message_gets_an_error_then_the_socket_closes(sphinx, message, code, said):
    events, close_code = run(exchange(sphinx.url, message))
    assert [event["type"] for event in events] == ["error"] and said in events[0]["message"]
    assert close_code == code


@pytest.mark.parametrize("query, said", [
    ("language=../../etc", "must be a language code"),
    ("language=", "must be a language code"),
    ("language=english", "must be a language code"),
])
def test_a_bad_language_query_is_a_400_before_the_upgrade(sphinx, query, said):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        run(exchange(sphinx.url, query=query))
    assert refused.value.status == 400
    answer = requests.get(f"{sphinx.url}/asr?{query}", timeout=5)
    assert answer.status_code == 400 and said in answer.json()["message"]
    with pytest.raises(ASRError, match=said):
        run(stream(ASRClient(sphinx.url), b"", query.partition("=")[2]))


def test_get_asr_without_a_websocket_is_told_so(sphinx):
    answer = requests.get(sphinx.url + "/asr", timeout=5)
    assert answer.status_code == 426 and "WebSocket" in answer.json()["message"]


@pytest.mark.parametrize("body, content_type, status, said", [
    (b"", "application/octet-stream", 400, "non-empty, even number of bytes"),
    (b"\x00\x01\x02", "application/octet-stream", 400, "got 3"),
    (b"\x00\x00", "application/json", 415, "application/octet-stream or audio/L16"),
    (b"\x00\x00", "audio/L16; rate=8000", 415, "16000 Hz mono"),
    (bytes(32000 * (LIMIT_SECONDS + 1)), "application/octet-stream", 413, f"longer than {LIMIT_SECONDS} s"),
])
def test_a_bad_transcribe_body_is_a_4xx_saying_why(sphinx, body, content_type, status, said):
    answer = requests.post(sphinx.url + "/transcribe", data=body, headers={"Content-Type": content_type}, timeout=10)
    assert answer.status_code == status
    assert answer.json()["status"] == "error" and said in answer.json()["message"]


def test_health_metrics_and_openapi(sphinx, speech):
    assert requests.get(sphinx.url + "/health", timeout=5).json() | {"uptime_seconds": 0} == {
        "status": "ok", "model": "sphinx", "languages": ["en"], "uptime_seconds": 0}
    heard = metric(sphinx, 'asr_audio_seconds_total{model="sphinx"}')
    run(ASRClient(sphinx.url).transcribe(speech, "en"))
    assert metric(sphinx, 'asr_audio_seconds_total{model="sphinx"}') == pytest.approx(heard + len(speech) / 32000)
    assert metric(sphinx, "asr_recognition_seconds_total") > 0
    assert metric(sphinx, 'asr_requests_total{model="sphinx",outcome="ok",route="transcribe"}') >= 1
    spec = requests.get(sphinx.url + "/openapi.json", timeout=5).json()
    assert {"/asr", "/transcribe", "/health", "/metrics", "/openapi.json"} <= set(spec["paths"])
    assert "101" in spec["paths"]["/asr"]["get"]["responses"]
    assert "Transcript" in spec["components"]["schemas"]


def test_the_sphinx_server_loads_no_whisper_libraries(sphinx):
    mapped = Path(f"/proc/{sphinx.proc.pid}/maps").read_text()
    assert "pocketsphinx" in mapped
    assert "ctranslate2" not in mapped and "onnxruntime" not in mapped


def test_nothing_above_went_wrong_inside_the_sphinx_server(sphinx):
    """Last of the sphinx tests: every refusal above was answered, none was an unhandled error."""
    log = sphinx.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log


def test_an_idle_socket_is_closed_with_a_reason(spawn):
    server = asr_server(spawn, "sphinx", ASR_IDLE_TIMEOUT="0.5")
    events, code = run(exchange(server.url))
    assert [event["type"] for event in events] == ["error"] and "ASR_IDLE_TIMEOUT" in events[0]["message"]
    assert code == aiohttp.WSCloseCode.POLICY_VIOLATION


def test_with_api_token_every_route_but_health_and_openapi_wants_it(spawn, speech):
    server = asr_server(spawn, "sphinx", API_TOKEN=TOKEN)
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    assert requests.get(server.url + "/openapi.json", timeout=5).json()["paths"]["/transcribe"]["post"]["security"]
    for path in ("/metrics", "/asr"):
        assert requests.get(server.url + path, timeout=5).status_code == 401
    with pytest.raises(ASRError, match="HTTP 401"):
        run(stream(ASRClient(server.url), speech))
    with pytest.raises(ASRError, match="answered 401: missing or wrong API token"):
        run(ASRClient(server.url, api_token="wrong").transcribe(speech, "en"))
    final, _ = run(stream(ASRClient(server.url, api_token=TOKEN), speech))
    assert HEARD in final.split()
    assert HEARD in run(ASRClient(server.url, api_token=TOKEN).transcribe(speech, "en")).split()


def test_a_server_that_is_not_there_is_an_asr_error():
    client = ASRClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ASRError, match="unreachable"):
        run(client.transcribe(b"\x00\x00", "en"))
    with pytest.raises(ASRError, match="unreachable"):
        run(stream(client, b"\x00\x00"))


# --- whisper --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_models(tmp_path_factory) -> Path:
    """MODELS_DIR with a tiny random multilingual Whisper as whisper/tiny-random."""
    from harness.whisper import save_random   # torch and transformers: only for these tests

    root = tmp_path_factory.mktemp("models")
    save_random(root / "whisper" / "tiny-random")
    return root


@pytest.fixture(scope="module")
def whisper(tmp_path_factory, whisper_models):
    server = Server(asr_argv("whisper"), tmp_path_factory.mktemp("whisper") / "server.log",
                    {"MODELS_DIR": str(whisper_models), "WHISPER_MODEL": "tiny-random"})
    try:
        yield server.wait_ready(timeout=60)
    finally:
        server.stop()


def test_whisper_knows_its_languages_and_transcribes_in_them(whisper, speech):
    health = requests.get(whisper.url + "/health", timeout=5).json()
    assert health["model"] == "whisper" and {"en", "fa", "de"} <= set(health["languages"])
    client = ASRClient(whisper.url, timeout=60)
    for language in ("en", "fa"):   # a random model: any text, but through the whole real path
        assert isinstance(run(client.transcribe(speech, language)), str)
    with pytest.raises(ASRError, match="whisper model does not recognise 'xx'"):
        run(client.transcribe(speech, "xx"))


def test_whisper_streams_partials_then_a_final(whisper, speech):
    final, partials = run(stream(ASRClient(whisper.url, timeout=60), speech, "fa"))
    assert isinstance(final, str)
    # Transcribed again after each second of new audio: at most one partial a second.
    assert 1 <= len(partials) <= int(len(speech) / 32000), partials
    assert "Traceback" not in whisper.log.read_text()


def test_whisper_takes_a_model_folder_by_its_absolute_path(spawn, whisper_models):
    server = asr_server(spawn, "whisper", WHISPER_MODEL=str(whisper_models / "whisper" / "tiny-random"))
    assert requests.get(server.url + "/health", timeout=5).json()["model"] == "whisper"


def test_whisper_without_weights_stops_naming_the_folder_and_the_command(tmp_path):
    done = refusal({"MODELS_DIR": str(tmp_path)}, "--model", "whisper")
    assert done.returncode == 2
    for said in (str(tmp_path / "whisper" / "small"), "model.bin", "tokenizer.json",
                 "python -m asr_services download-models --whisper small"):
        assert said in done.stderr
    # A folder without its tokenizer: faster-whisper would fetch one from the hub; refused first.
    folder = tmp_path / "whisper" / "base"
    folder.mkdir(parents=True)
    for name in ("model.bin", "config.json", "vocabulary.txt"):
        (folder / name).write_text("{}")
    done = refusal({"MODELS_DIR": str(tmp_path), "WHISPER_MODEL": "base", "HF_HUB_OFFLINE": "1"}, "--model", "whisper")
    assert done.returncode == 2 and "missing: tokenizer.json." in done.stderr


def test_download_models_without_the_hub_says_so(tmp_path):
    done = refusal({"MODELS_DIR": str(tmp_path), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
                   "download-models", "--whisper", "tiny")
    assert done.returncode == 1
    assert "could not fetch Systran/faster-whisper-tiny" in done.stderr
    assert str(tmp_path / "whisper" / "tiny") in done.stderr


# --- openai ---------------------------------------------------------------------------------------


def test_openai_without_asr_url_stops_saying_what_to_set():
    done = refusal({"ASR_URL": ""}, "--model", "openai")
    assert done.returncode == 2 and "needs ASR_URL" in done.stderr and "--model openai" in done.stderr


def test_openai_sends_the_utterance_as_wav_and_answers_its_text(spawn, upstream, speech):
    up = upstream("openai")
    server = asr_server(spawn, "openai", ASR_URL=up.url + "/v1", ASR_API_KEY="sk-test",
                        ASR_OPENAI_MODEL="whisper-large-v3")
    assert requests.get(server.url + "/health", timeout=5).json()["languages"] is None   # whatever upstream knows
    assert run(ASRClient(server.url).transcribe(speech, "fa-IR")) == TRANSCRIPT
    assert requests.get(up.url + "/last", timeout=5).json() == {
        "model": "whisper-large-v3", "language": "fa", "response_format": "json", "authorization": "Bearer sk-test",
        "filename": "utterance.wav", "rate": 16000, "channels": 1, "sample_width": 2, "samples": len(speech) // 2}
    final, partials = run(stream(ASRClient(server.url), speech))
    assert final == TRANSCRIPT and partials == []   # it has no running hypothesis
    assert requests.get(up.url + "/last", timeout=5).json()["samples"] == len(speech) // 2


def test_an_utterance_the_server_ends_at_the_limit_comes_back_whole(spawn, upstream, speech):
    up = upstream("openai")
    server = asr_server(spawn, "openai", ASR_URL=up.url + "/v1", ASR_MAX_UTTERANCE_SECONDS="1")
    final, _ = run(stream(ASRClient(server.url), speech + speech))   # 3.1 s: ended at 1, 2 and 3 s, then the rest
    assert final == " ".join([TRANSCRIPT] * 4)


@pytest.mark.parametrize("down, said", [("no server", "is unreachable"), ("error", "answered 500")])
def test_an_openai_upstream_down_or_failing_is_a_503_not_a_500(spawn, upstream, speech, down, said):
    url = f"http://127.0.0.1:{free_port()}" if down == "no server" else upstream("openai", "--mode", "error").url
    server = asr_server(spawn, "openai", ASR_URL=url + "/v1")
    answer = requests.post(server.url + "/transcribe", data=speech, headers={"Content-Type": "audio/L16"}, timeout=10)
    assert answer.status_code == 503 and said in answer.json()["message"]
    with pytest.raises(ASRError, match=said):
        run(stream(ASRClient(server.url), speech))
    events, code = run(exchange(server.url, *pieces(speech), {"type": "end"}))
    assert [event["type"] for event in events] == ["error"] and said in events[0]["message"]
    assert code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    assert "Traceback" not in server.log.read_text()
