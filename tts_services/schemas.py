"""The TTS server's request and response bodies as marshmallow schemas: they validate requests
(contracts.openapi.load) and make the OpenAPI document, so the two cannot disagree.

The request schema depends on the engine (its voices and languages) and on the text limit, so it
is made for each engine by `speech_schema`; its messages name what is allowed.
"""
from __future__ import annotations

import functools
import re

from marshmallow import Schema, ValidationError, fields

from contracts.openapi import Body

from .engines.base import TTSEngine, Voice

_LANG = re.compile(r"^[a-z]{2,3}$")
# A character that is not white space, spelled out because \s differs between Python (which
# counts \x1c-\x1f and \x85) and the ECMA-262 regular expressions of OpenAPI (which count \ufeff).
_NOT_SPACE = (r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
              r"\ufeff]")
_EMPTY_TEXT = "text must be a non-empty string"


def _allowed(values) -> str:
    return ", ".join(sorted(values))


class SpeechText(fields.String):
    """Text to speak: a string that is not blank, within the server's limit, encodable as UTF-8."""

    def __init__(self, max_chars: int, **kwargs) -> None:
        super().__init__(required=True, error_messages={"required": _EMPTY_TEXT, "null": _EMPTY_TEXT},
                         metadata={"minLength": 1, "maxLength": max_chars, "pattern": _NOT_SPACE,
                                   "description": "What to say; not only spaces."}, **kwargs)
        self.max_chars = max_chars

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        if not isinstance(value, str) or not re.search(_NOT_SPACE, value):
            raise ValidationError(_EMPTY_TEXT)
        if len(value) > self.max_chars:
            raise ValidationError(f"text is {len(value)} characters; the limit is {self.max_chars}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON may carry "\ud800": a half of a character, not text
            raise ValidationError("text must be valid Unicode; it holds an unpaired surrogate") from None
        return value


class VoiceName(fields.String):
    """A voice of the engine, by name; empty or null means the language's default voice."""

    def __init__(self, engine: TTSEngine, **kwargs) -> None:
        described = {"description": "A voice name from GET /voices; empty or absent: the language's default."}
        if engine.VOICE_PATTERN is None:
            described["enum"] = [*(v.name for v in engine.voices()), "", None]
        else:
            described["description"] += f" Other names matching {engine.VOICE_PATTERN.pattern} are accepted too."
        super().__init__(load_default=None, allow_none=True, metadata=described, **kwargs)
        self.engine = engine

    def _deserialize(self, value, attr, data, **kwargs) -> Voice | None:
        if value == "":
            return None
        voice = self.engine.find_voice(value) if isinstance(value, str) else None
        if voice is None:
            names = _allowed(v.name for v in self.engine.voices())
            raise ValidationError(f"unknown voice {value!r} for {self.engine.name}; allowed: {names}")
        return voice


class LanguageCode(fields.String):
    """A language the engine speaks, as a two- or three-letter code in any case; null: from the text."""

    def __init__(self, engine: TTSEngine, **kwargs) -> None:
        super().__init__(load_default=None, allow_none=True, metadata={
            "enum": [*sorted(engine.languages), None],  # OpenAPI 3.0.3: a nullable enum lists null
            "description": "Absent: Persian for Arabic script, else English, or the voice's language."},
            **kwargs)
        self.engine = engine

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        allowed = _allowed(self.engine.languages)
        if not isinstance(value, str) or not _LANG.match(value.lower()):
            raise ValidationError(f"lang must be a language code; allowed: {allowed}")
        if value.lower() not in self.engine.languages:
            raise ValidationError(f"unknown lang {value.lower()!r} for {self.engine.name}; allowed: {allowed}")
        return value.lower()


@functools.cache
def speech_schema(engine: TTSEngine, max_chars: int) -> type[Body]:
    """The body of POST /tts and /tts/events for this engine and text limit."""

    class SpeechSchema(Body):
        class Meta(Body.Meta):
            register = False  # one class per engine: marshmallow's registry would hold duplicates

        text = SpeechText(max_chars)
        voice = VoiceName(engine)
        lang = LanguageCode(engine)

    return SpeechSchema


class VoiceSchema(Schema):
    name = fields.String(required=True)
    lang = fields.String(required=True)
    gender = fields.String(required=True)
    description = fields.String(required=True)


class VoicesSchema(Schema):
    model = fields.String(required=True)
    default = fields.String(required=True, metadata={"description": "The voice used when none is asked for."})
    languages = fields.List(fields.String(), required=True)
    voices = fields.List(fields.Nested(VoiceSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})
    model = fields.String(required=True)
    uptime_seconds = fields.Float(required=True)
