"""Chat replies from an OpenAI-compatible endpoint, streamed as they are written."""
from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import aiohttp


class LLMError(RuntimeError):
    pass


class ChatLLM:
    """POST {url}/chat/completions with stream=true; url is the API base, e.g. http://host:8000/v1."""

    def __init__(self, url: str, model: str, api_key: str = "", system_prompt: str = "",
                 timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.system_prompt = system_prompt
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=timeout)

    async def deltas(self, history: list[dict]) -> AsyncIterator[str]:
        """The reply to the conversation so far, piece by piece as it streams in."""
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + history
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": messages, "stream": True}
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as http:
                async with http.post(f"{self.url}/chat/completions", json=body, headers=headers) as response:
                    if response.status != 200:
                        detail = (await response.text(errors="replace"))[:300]
                        raise LLMError(f"LLM at {self.url} answered {response.status}: {detail}")
                    async for line in response.content:
                        line = line.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            break
                        choices = json.loads(data).get("choices") or [{}]
                        delta = choices[0].get("delta", {}).get("content")
                        if delta:
                            yield delta
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            raise LLMError(f"LLM at {self.url} failed: {exc or type(exc).__name__}") from exc
