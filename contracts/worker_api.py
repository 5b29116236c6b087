"""The bodies the worker's routes accept: they validate requests and describe them in /openapi.json."""
from __future__ import annotations

import re

from marshmallow import RAISE, fields, validate

from .openapi import Body

DIGITS = re.compile(r"[0-9]{1,18}")
LARGEST = 10 ** 18 - 1


class SessionId(fields.Field):
    """The number /offer returned: LiveTalking sends a JSON number, some clients a numeric string."""

    default_error_messages = {"invalid": "must be the number /offer returned"}

    def __init__(self, **kwargs) -> None:
        metadata = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": LARGEST},
                              {"type": "string", "pattern": "^[0-9]{1,18}$"}],
                    "description": "the session number /offer returned", "example": 123456}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> int:
        if isinstance(value, str) and DIGITS.fullmatch(value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= LARGEST:
            return value
        raise self.make_error("invalid")


class OfferSchema(Body):
    sdp = fields.String(required=True, validate=validate.Length(min=1, error="must be a non-empty SDP offer"),
                        metadata={"description": "the browser's SDP offer"})
    type = fields.String(required=True, validate=validate.OneOf(["offer"], error='must be "offer"'))
    # For an offer that sends the viewer's microphone (an audio track sendrecv or sendonly).
    mode = fields.String(load_default=None, validate=validate.OneOf(["echo", "chat"], error="must be 'echo' or 'chat'"),
                         metadata={"description": "what the viewer's recognised speech gets: chat, an LLM's "
                                                  "reply (the default where the worker has an LLM); echo, "
                                                  "said back"})
    barge_in = fields.Boolean(load_default=None,
                              metadata={"description": "whether the viewer speaking silences the avatar "
                                                       "(default: BARGE_IN, on)"})


class AnswerSchema(Body):
    sdp = fields.String(required=True, metadata={"description": "the worker's SDP answer"})
    type = fields.String(required=True, validate=validate.OneOf(["answer"]))
    sessionid = fields.Integer(required=True, metadata={"description": "use it in every later request"})


class HumanSchema(Body):
    sessionid = SessionId(required=True)
    text = fields.String(required=True, validate=validate.Regexp(r"\s*\S", error="must be a non-empty string"),
                         metadata={"description": "what to say; at most MAX_TEXT_CHARS (2000) characters"})
    type = fields.String(load_default="echo",
                         validate=validate.OneOf(["echo", "chat"], error="must be 'echo' or 'chat'"),
                         metadata={"description": "echo: say the text; chat: say an LLM's reply to it"})
    interrupt = fields.Boolean(load_default=False,
                               metadata={"description": "drop what is being said first"})


class HumanAudioSchema(Body):
    class Meta:
        # Documented as closed: aiohttp's multipart parser refuses some field names outright.
        unknown = RAISE

    sessionid = SessionId(required=True)
    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary",
                                               "description": "a wav, mp3, ogg or flac file of at most 20 MB and "
                                                              "MAX_AUDIO_SECONDS (120 s)"})
    type = fields.String(load_default="audio",
                         validate=validate.OneOf(["audio", "chat"], error="must be 'audio' or 'chat'"),
                         metadata={"description": "audio: lip-sync the file as it is; chat: recognise the "
                                                  "speech in it and say an LLM's reply"})


class SessionRequestSchema(Body):
    sessionid = SessionId(required=True)


class EventsQuerySchema(Body):
    sessionid = SessionId(load_default=None)


class DoneSchema(Body):
    code = fields.Integer(required=True, validate=validate.Equal(0))
    msg = fields.String(required=True)


class HeardSchema(Body):
    code = fields.Integer(required=True, validate=validate.Equal(0))
    msg = fields.String(required=True)
    data = fields.Dict(metadata={"description": "type chat: what was recognised in the file (its text), "
                                                "which the reply answers; absent for type audio",
                                 "example": {"text": "what is the weather like"}})


class SpeakingSchema(Body):
    code = fields.Integer(required=True, validate=validate.Equal(0))
    data = fields.Boolean(required=True, metadata={"description": "whether the session is speaking"})


class ErrorSchema(Body):
    code = fields.Integer(required=True, validate=validate.Equal(-1))
    msg = fields.String(required=True, metadata={"description": "what was wrong, in a sentence"})


class HealthSchema(Body):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "warming"]))
    ready = fields.Boolean(required=True, metadata={"description": "false while a model engine loads"})
    # The rest only to a caller with the API token, where one is set (see /health).
    instance_token = fields.String()
    pid = fields.Integer()
    avatar = fields.String()
    engine = fields.String()
    sessions = fields.Integer()
    max_session = fields.Integer()
    speaking_sessions = fields.Integer()
    fps = fields.Float()
    uptime_seconds = fields.Float()


# --- /record and /set_audiotype (recording.py, clips.py) ------------------------------------------

class Audiotype(fields.Field):
    """A clip's name, or LiveTalking's integer state (2 names the clip "2")."""

    default_error_messages = {"invalid": "must be a clip name or a number, e.g. \"wave\", 2 or \"idle\""}

    def __init__(self, **kwargs) -> None:
        metadata = {"oneOf": [{"type": "integer"}, {"type": "string"}], "example": "idle",
                    "description": 'the clip to play at rest; "idle", 0 or 1: the avatar\'s own idle animation'}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value
        raise self.make_error("invalid")


class RecordSchema(Body):
    sessionid = SessionId(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["start_record", "end_record"],
                                                                error="must be 'start_record' or 'end_record'"))


class SetAudiotypeSchema(Body):
    sessionid = SessionId(required=True)
    audiotype = Audiotype(required=True)
    reinit = fields.Boolean(load_default=True, metadata={"description": "restart the clip from its first frame"})


class RecordedSchema(Body):
    code = fields.Integer(required=True, validate=validate.Equal(0))
    msg = fields.String(required=True)
    data = fields.Dict(metadata={"description": "end_record: seconds recorded and ticks dropped by a busy encoder",
                                 "example": {"seconds": 3.04, "dropped_frames": 0}})


SCHEMAS = [OfferSchema, AnswerSchema, HumanSchema, HumanAudioSchema, SessionRequestSchema, DoneSchema, HeardSchema,
           SpeakingSchema, ErrorSchema, HealthSchema, RecordSchema, SetAudiotypeSchema, RecordedSchema]
