"""Small local servers that speak the wire formats of the servers our code calls.

    python tests/upstreams.py sovits|cosyvoice|coqui|openai --port P [--rate R] [--mode ok|cut|hang|error|fa]

Each answers with a 440 Hz tone lasting TONE_SECONDS_PER_CHAR per character of text, at the
upstream's own sample rate, so a test can check length and pitch after our resampling.
GET /last returns what the latest synthesis request carried, for asserting the bridge's request.
Modes: cut = drop the connection halfway; hang = never answer; error = answer 400 as upstream does.
openai answers POST /v1/chat/completions (stream=true) with CHAT_REPLY as server-sent events,
a few characters per event, the way OpenAI-compatible servers stream (mode fa: CHAT_REPLY_FA), and
POST /v1/audio/transcriptions (a multipart form with a WAV file) with TRANSCRIPT; GET /last then
tells the form's fields and the WAV's rate, channels and samples.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import wave

import numpy as np
from aiohttp import web

TONE_HZ = 440
TONE_SECONDS_PER_CHAR = 0.05
CHAT_REPLY = "Hello from the model. This is my second sentence!"
CHAT_REPLY_FA = "سلام از مدل. این جمله دوم من است!"   # --mode fa
TRANSCRIPT = "Hello from the transcription server."


def tone(text: str, rate: int) -> bytes:
    t = np.arange(int(len(text) * TONE_SECONDS_PER_CHAR * rate)) / rate
    return (np.sin(2 * np.pi * TONE_HZ * t) * 10000).astype("<i2").tobytes()


def wav_header(rate: int, data_size: int) -> bytes:
    """A PCM WAV header; GPT-SoVITS streams it with sizes of 0."""
    return (b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_size))


def create_app(kind: str, rate: int, mode: str) -> web.Application:
    last: dict = {}

    async def send(request: web.Request, head: bytes, pcm: bytes, content_type: str) -> web.StreamResponse:
        if mode == "hang":
            await asyncio.sleep(3600)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await response.write(head)
        pieces = [pcm[i:i + 4000] for i in range(0, len(pcm), 4000)]  # odd sizes on purpose
        for i, piece in enumerate(pieces):
            if mode == "cut" and i == len(pieces) // 2:
                request.transport.close()
                return response
            await response.write(piece)
            await asyncio.sleep(0.002)
        await response.write_eof()
        return response

    async def sovits(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        last.clear()
        last.update(body)
        for field in ("ref_audio_path", "text", "text_lang", "prompt_lang"):
            if not body.get(field):
                return web.json_response({"message": f"{field} is required"}, status=400)
        if mode == "error":
            return web.json_response({"message": "tts failed", "Exception": "CUDA out of memory"}, status=400)
        pcm = tone(body["text"], rate)
        head = wav_header(rate, 0) if body.get("streaming_mode") else wav_header(rate, len(pcm))
        return await send(request, head, pcm, f"audio/{body.get('media_type', 'wav')}")

    async def cosyvoice(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        last.clear()
        last.update({k: (v if isinstance(v, str) else {"filename": v.filename, "size": len(v.file.read())})
                     for k, v in form.items()})
        last["route"] = request.path
        required = {"/inference_sft": ("tts_text", "spk_id"),
                    "/inference_zero_shot": ("tts_text", "prompt_text", "prompt_wav")}[request.path]
        missing = [f for f in required if f not in form]
        if missing:
            return web.json_response({"detail": [{"loc": ["body", f], "msg": "field required"} for f in missing]},
                                     status=422)
        if mode == "error":
            return web.Response(status=500, text="Internal Server Error")
        return await send(request, b"", tone(form["tts_text"], rate), "application/octet-stream")

    async def coqui(request: web.Request) -> web.StreamResponse:
        last.clear()
        last.update(request.query)
        text = request.query.get("text", "")
        if mode == "error" or not text:
            return web.Response(status=500, text="<html>500 Internal Server Error</html>")
        pcm = tone(text, rate)
        return await send(request, wav_header(rate, len(pcm)), pcm, "audio/wav")

    async def openai(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        last.clear()
        last.update(body)
        last["authorization"] = request.headers.get("Authorization", "")
        if mode == "error":
            return web.json_response({"error": {"message": "model not found"}}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        reply = CHAT_REPLY_FA if mode == "fa" else CHAT_REPLY
        for i in range(0, len(reply), 7):
            delta = {"choices": [{"index": 0, "delta": {"content": reply[i:i + 7]}}]}
            await response.write(f"data: {json.dumps(delta)}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def transcriptions(request: web.Request) -> web.Response:
        """OpenAI's POST /v1/audio/transcriptions: 400 as OpenAI does when the form is wrong."""
        form = await request.post()
        last.clear()
        last.update({k: v for k, v in form.items() if isinstance(v, str)})
        last["authorization"] = request.headers.get("Authorization", "")
        if mode == "error":
            return web.json_response({"error": {"message": "model overloaded"}}, status=500)
        upload = form.get("file")
        if isinstance(upload, str) or upload is None or not form.get("model"):
            return web.json_response({"error": {"message": "file and model are required"}}, status=400)
        try:
            with wave.open(io.BytesIO(upload.file.read())) as audio:
                last.update(filename=upload.filename, rate=audio.getframerate(), channels=audio.getnchannels(),
                            sample_width=audio.getsampwidth(), samples=audio.getnframes())
        except (wave.Error, EOFError):
            return web.json_response({"error": {"message": "the file is not a WAV"}}, status=400)
        return web.json_response({"text": TRANSCRIPT})

    async def last_request(request: web.Request) -> web.Response:
        return web.json_response(last)

    app = web.Application()
    app.router.add_get("/last", last_request)
    if kind == "sovits":
        app.router.add_post("/tts", sovits)
    elif kind == "cosyvoice":
        for route in ("/inference_sft", "/inference_zero_shot"):
            app.router.add_route("*", route, cosyvoice)
    elif kind == "openai":
        app.router.add_post("/v1/chat/completions", openai)
        app.router.add_post("/v1/audio/transcriptions", transcriptions)
    else:
        app.router.add_route("*", "/api/tts", coqui)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["sovits", "cosyvoice", "coqui", "openai"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=int, default=None)
    parser.add_argument("--mode", choices=["ok", "cut", "hang", "error", "fa"], default="ok")
    args = parser.parse_args()
    default_rate = {"sovits": 32000, "cosyvoice": 24000, "coqui": 22050, "openai": 0}[args.kind]
    web.run_app(create_app(args.kind, args.rate or default_rate, args.mode), host="127.0.0.1",
                port=args.port, print=None)
