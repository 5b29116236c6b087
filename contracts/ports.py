"""Every port of the avatar fleet in one table. Environment variables may override them."""

MANAGER_HOST = "127.0.0.1"
MANAGER_PORT = 8607

# Lip-sync workers lease ports from here, MAX_AVATARS wide.
AVATAR_BASE_PORT = 8615
# A worker started by hand listens here unless told otherwise (LiveTalking's default).
WORKER_PORT = 8010

# One TTS server per voice model, started on demand (tts_services). The first four are the
# existing system's; espeak, the offline default, has its own.
TTS_PORTS = {
    "edgetts": 5002,
    "tacotron": 5005,
    "cosyvoice": 5006,
    "sovits": 5007,
    "espeak": 5008,
}

# One speech recognition server per model, started on demand (asr_services).
ASR_PORTS = {
    "sphinx": 5010,
    "whisper": 5011,
    "openai": 5012,
}

# Operator-run servers our TTS bridges call, at their projects' own default ports.
UPSTREAM_URLS = {
    "sovits": "http://127.0.0.1:9880",      # GPT-SoVITS api_v2.py
    "cosyvoice": "http://127.0.0.1:50000",  # CosyVoice runtime/python/fastapi/server.py
}
