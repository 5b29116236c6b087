"""Bridge to CosyVoice's FastAPI server: headerless int16 PCM at the model's rate."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import aiohttp

from contracts.settings import ConfigError

from ..audio import PcmStream
from ..settings import Settings
from .base import AudioChunk, Voice
from .bridge import HttpBridge


class CosyVoiceEngine(HttpBridge):
    name = "cosyvoice"
    upstream = "CosyVoice"
    languages = frozenset({"zh", "en", "ja", "ko", "yue"})

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if settings.cosyvoice_ref_audio:
            path = Path(settings.cosyvoice_ref_audio)
            if not path.is_file():
                raise ConfigError(f"COSYVOICE_REF_AUDIO={path} is not a readable file")
            # Zero-shot cloning uploads the prompt with every request; read it once.
            self._prompt_wav: bytes | None = path.read_bytes()
            description = f"cloned from {path.name}"
        elif settings.cosyvoice_spk_id:
            self._prompt_wav = None
            description = f"built-in speaker {settings.cosyvoice_spk_id}"
        else:
            raise ConfigError("cosyvoice needs COSYVOICE_REF_AUDIO (+ COSYVOICE_REF_TEXT) for zero-shot "
                              "cloning or COSYVOICE_SPK_ID for a built-in speaker")
        self.VOICES = [Voice("default", "zh", "", description)]

    def synthesize(self, text: str, voice: Voice, lang: str) -> AsyncIterator[AudioChunk]:
        s = self.settings
        form = aiohttp.FormData()
        form.add_field("tts_text", text)
        if self._prompt_wav is not None:
            route = "inference_zero_shot"
            form.add_field("prompt_text", s.cosyvoice_ref_text)
            form.add_field("prompt_wav", self._prompt_wav, filename="prompt.wav", content_type="audio/wav")
        else:
            route = "inference_sft"
            form.add_field("spk_id", s.cosyvoice_spk_id)
        converter = PcmStream(s.cosyvoice_sample_rate)  # the wire never names the rate
        return self.stream_audio("POST", f"{s.cosyvoice_url}/{route}", converter, data=form)
