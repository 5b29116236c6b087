"""The client the lip-sync worker uses: streaming, retries, clear errors, offline fallback."""
import logging
import time

import pytest

from audio_checks import rms
from conftest import run, tts_argv
from harness.ports import free_port
from tts_services.client import FallbackTTS, LocalTTS, TTSClient, TTSRejected, TTSUnavailable


async def collect(stream) -> list:
    return [chunk async for chunk in stream]


def test_streams_chunks_with_phonemes(tts_server):
    server = tts_server()

    async def go():
        async with TTSClient(server.url) as client:
            chunks = await collect(client.stream("One sentence. And another one.", voice="FemaleC"))
            voices = await client.voices()
            health = await client.health()
        return chunks, voices, health

    chunks, voices, health = run(go())
    assert len(chunks) == 2 and all(rms(c.pcm) > 500 for c in chunks)
    # Phoneme times come back relative to their own chunk, as engines make them.
    assert all(0 <= p.start <= p.end <= c.seconds + 0.05 for c in chunks for p in c.phonemes)
    assert voices["model"] == "espeak" and health["status"] == "ok"


def test_a_bad_request_is_rejected_not_retried(tts_server):
    server = tts_server()

    async def go():
        async with TTSClient(server.url) as client:
            await collect(client.stream("hi", voice="Nobody"))

    with pytest.raises(TTSRejected, match="answered 400: unknown voice 'Nobody'"):
        run(go())


def test_server_down_is_a_clear_error_after_bounded_retries():
    async def go():
        async with TTSClient(f"http://127.0.0.1:{free_port()}", retries=2, retry_delay=0.05) as client:
            await collect(client.stream("hi"))

    t0 = time.monotonic()
    with pytest.raises(TTSUnavailable, match="is down or unreachable"):
        run(go())
    assert time.monotonic() - t0 < 2


def test_connect_retries_reach_a_server_that_comes_up_late(spawn):
    port = free_port()

    async def go():
        async with TTSClient(f"http://127.0.0.1:{port}", retries=8, retry_delay=0.1) as client:
            # The server starts while the client is already retrying.
            spawn(tts_argv("espeak"), ready=False, port=port)
            return await collect(client.stream("Late but here."))

    assert rms(b"".join(c.pcm for c in run(go()))) > 500


def test_a_server_error_midway_raises(tts_server, upstream):
    up = upstream("sovits", "--mode", "cut")
    server = tts_server("sovits", SOVITS_URL=up.url, SOVITS_REF_AUDIO="/r.wav")

    async def go():
        async with TTSClient(server.url) as client:
            return await collect(client.stream("A long text to cut in the middle. " * 4))

    with pytest.raises(TTSUnavailable, match="failed mid-speech"):
        run(go())


def test_falls_back_to_the_offline_voice_when_the_server_is_down(caplog):
    async def go():
        tts = FallbackTTS(TTSClient(f"http://127.0.0.1:{free_port()}", retries=0), LocalTTS())
        try:
            return await collect(tts.stream("Still speaking.", voice="FemaleA"))
        finally:
            await tts.primary.close()

    with caplog.at_level(logging.WARNING, logger="tts_services.client"):
        chunks = run(go())
    assert rms(b"".join(c.pcm for c in chunks)) > 500
    assert any(c.phonemes for c in chunks)
    assert "is down or unreachable" in caplog.text and "offline voice local espeak" in caplog.text


def test_falls_back_when_the_configured_voice_fails(tts_server, caplog):
    server = tts_server("edgetts", EDGETTS_PROXY=f"http://127.0.0.1:{free_port()}")

    async def go():
        tts = FallbackTTS(TTSClient(server.url), LocalTTS())
        try:
            # A full edge voice name the offline engine does not have: it speaks with its default.
            return await collect(tts.stream("سلام دوست من", voice="fa-IR-DilaraNeural", lang="fa"))
        finally:
            await tts.primary.close()

    with caplog.at_level(logging.WARNING, logger="tts_services.client"):
        chunks = run(go())
    assert rms(b"".join(c.pcm for c in chunks)) > 500
    assert "answered 503" in caplog.text and "needs the internet" in caplog.text


def test_no_fallback_when_the_primary_works(tts_server, caplog):
    server = tts_server()

    async def go():
        tts = FallbackTTS(TTSClient(server.url), LocalTTS())
        try:
            return await collect(tts.stream("Fine."))
        finally:
            await tts.primary.close()

    with caplog.at_level(logging.WARNING, logger="tts_services.client"):
        assert run(go())
    assert "offline voice" not in caplog.text


def test_local_tts_rejects_bad_input_like_the_server():
    async def go():
        await collect(LocalTTS().stream(""))

    with pytest.raises(TTSRejected, match="non-empty"):
        run(go())
