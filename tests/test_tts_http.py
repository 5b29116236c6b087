"""The TTS server's HTTP edges, as a real subprocess: whatever a client sends gets a clear 4xx
(never a 5xx), every listed voice speaks, and /openapi.json describes what the server does."""
import gzip
import re

import pytest
import requests

from audio_checks import rms, seconds
from conftest import Server, tts_argv

MAX_TEXT_CHARS = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tts_argv("espeak"), tmp_path_factory.mktemp("tts-http") / "server.log",
                 {"TTS_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS)})
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def post(server, data: bytes, path: str = "/tts", **headers) -> requests.Response:
    return requests.post(server.url + path, data=data, headers=headers, timeout=10)


def outcomes(server) -> dict[str, float]:
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    counted = re.finditer(r'tts_requests_total\{model="espeak",outcome="(\w+)"\} (\S+)', metrics)
    return {m[1]: float(m[2]) for m in counted}


@pytest.mark.parametrize("data, headers, message", [
    (b"[" * 30_000 + b"]" * 30_000, {}, "body must be JSON"),                          # RecursionError
    (b'{"text": "hi"}', {"Content-Type": "application/json; charset=klingon"}, "unknown charset 'klingon'"),
    (b'{"text": "hi"}', {"Content-Type": "application/json; charset=base64"}, "unknown charset 'base64'"),
    (b'{"text": "\xff\xfe"}', {"Content-Type": "application/json"}, "not valid 'utf-8' text"),
    (b'{"text": "hi", "lang": ' + b"9" * 5000 + b"}", {}, "body must be JSON"),     # over Python's int digits
    (b'{"text": "hi \\ud800"}', {}, "unpaired surrogate"),
    (b'{"text": "hi"}', {"Content-Encoding": "gzip"}, "body could not be read"),
    (b"", {}, "body must be JSON"),
    (b"null", {}, "body must be a JSON object"),
    (b'"hi"', {}, "body must be a JSON object"),
    (b"42", {}, "body must be a JSON object"),
    (b"text=hello", {"Content-Type": "application/x-www-form-urlencoded"}, "body must be JSON"),
    (b"--b\r\nContent-Disposition: form-data; name=text\r\n\r\nhi\r\n--b--\r\n",
     {"Content-Type": "multipart/form-data; boundary=b"}, "body must be JSON"),
    (b'{"text": null}', {}, "text must be a non-empty string"),
    (b'{"text": ["hi"]}', {}, "text must be a non-empty string"),
    (b'{"text": "\\u2003\\u3000\\t"}', {}, "text must be a non-empty string"),
    (b'{"text": "hi", "voice": {"name": "en-us"}}', {}, "unknown voice {'name': 'en-us'}"),
    (b'{"text": "hi", "voice": true}', {}, "unknown voice True"),
    (b'{"text": "hi", "lang": 1e999}', {}, "lang must be a language code"),
    (b'{"text": "hi", "lang": ["en"]}', {}, "lang must be a language code"),
    (b'{"text": "hi", "lang": "de"}', {}, "unknown lang 'de' for espeak; allowed: en, fa, zh"),
])
def test_anything_a_client_sends_wrong_is_a_400_that_says_why(server, data, headers, message):
    before = outcomes(server)
    for path in ("/tts", "/tts/events"):
        response = post(server, data, path, **headers)
        assert response.status_code == 400, response.text
        assert response.json()["status"] == "error"
        assert message in response.json()["message"]
    assert outcomes(server).get("ok") == before.get("ok")  # nothing was spoken
    assert "Error handling request" not in server.log.read_text()  # no handler failed


def test_over_the_limit_is_a_413_however_the_body_comes(server):
    def chunks():
        for _ in range(100):
            yield b" " * 1000

    for data, headers in [(b'{"text": "' + b"a" * 70_000 + b'"}', {}),
                          (chunks(), {}),                                       # chunked, no length
                          (gzip.compress(b" " * 5_000_000), {"Content-Encoding": "gzip"})]:
        response = requests.post(server.url + "/tts", data=data, headers=headers, timeout=10)
        assert response.status_code == 413 and "larger than 65536 bytes" in response.json()["message"]
    assert "Error handling request" not in server.log.read_text()


def test_json_arrives_as_curl_and_clients_send_it(server):
    def chunks():
        yield b'{"text": "Hello '
        yield b'there."}'

    for data, headers in [(chunks(), {}),                                       # chunked
                          (b'{"text": "Hello there."}', {}),                    # curl -d: a form type
                          (b'{"text": "Hello there."}', {"Content-Type": "text/plain"}),
                          ('{"text": "Hello there."}'.encode("utf-16"),
                           {"Content-Type": "application/json; charset=utf-16"}),
                          (gzip.compress(b'{"text": "Hello there."}'), {"Content-Encoding": "gzip"})]:
        response = requests.post(server.url + "/tts", data=data, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        assert seconds(response.content) > 0.4 and rms(response.content) > 500


def test_every_listed_voice_speaks(server):
    voices = requests.get(server.url + "/voices", timeout=5).json()["voices"]
    for voice in voices:
        text = {"fa": "سلام دوست من", "zh": "你好朋友"}.get(voice["lang"], "Hello my friend")
        response = requests.post(server.url + "/tts", json={"text": text, "voice": voice["name"]}, timeout=10)
        assert response.status_code == 200, (voice, response.text)
        assert rms(response.content) > 500, voice


def test_wrong_methods_and_paths_answer_json_with_allow(server):
    response = requests.get(server.url + "/tts", timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert response.json()["status"] == "error"
    response = requests.delete(server.url + "/voices", timeout=5)
    assert response.status_code == 405 and set(response.headers["Allow"].split(",")) >= {"GET"}
    response = requests.get(server.url + "/nowhere", timeout=5)
    assert response.status_code == 404 and response.json()["status"] == "error"


def test_openapi_document_describes_every_route_and_this_servers_limits(server):
    document = requests.get(server.url + "/openapi.json", timeout=5).json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"/tts": {"post"}, "/tts/events": {"post"}, "/voices": {"get"}, "/health": {"get"},
            "/metrics": {"get"}, "/openapi.json": {"get"}} == {p: set(ops) for p, ops in paths.items()}
    speech = document["components"]["schemas"]["Speech"]
    assert speech["required"] == ["text"]
    assert speech["properties"]["text"]["maxLength"] == MAX_TEXT_CHARS
    assert speech["properties"]["lang"]["enum"] == ["en", "fa", "zh", None]
    listed = {v["name"] for v in requests.get(server.url + "/voices", timeout=5).json()["voices"]}
    assert set(speech["properties"]["voice"]["enum"]) == listed | {"", None}
    for path, media_type in (("/tts", "application/octet-stream"), ("/tts/events", "application/x-ndjson")):
        responses = paths[path]["post"]["responses"]
        assert media_type in responses["200"]["content"]
        assert {"400", "413", "503"} <= set(responses)
    error = document["components"]["responses"]["BadRequest"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    assert "X-Audio-Format" in paths["/tts"]["post"]["responses"]["200"]["headers"]
