"""The manager's request and response bodies as marshmallow schemas: requests are validated with
them (contracts.openapi.load) and the OpenAPI document is made from them, so the two agree.

Names follow contracts.openapi: FooSchema is referred to as `Foo`. The answers share one envelope,
{"status", "message", "data"}; RESPONSES holds the error answers every route refers to.
"""
from __future__ import annotations

import re

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from contracts import asr_models, worker_api
from contracts.avatars import DEFAULT_CONFIG, NAME
from contracts.engines import ENGINES
from contracts.openapi import Body, error_responses

from .instances import State

NAME_PATTERN = NAME.pattern
# The words of the fixed routes beside /avatar/<name> (DELETE): no avatar may be called so.
ROUTE_WORDS = ("avatars", "disconnect", "list", "register", "restart", "start", "stop", "stop-all")
_NAME_RULE = "1-64 letters, digits, '_' or '-'"
# Characters that have no place in a one-line form field (NUL cannot even be in a command line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class AvatarName(fields.String):
    """An avatar name or instance id; `optional`: also empty or null, which mean "not given"."""

    def __init__(self, optional: bool = False, required: bool = True, **kwargs) -> None:
        if optional:
            kwargs.update(allow_none=True, load_default=None)
        elif not required:  # may be absent, but not empty
            kwargs.update(load_default=None)
        super().__init__(required=required and not optional, error_messages={"required": "missing", "null": "missing",
                                                                "invalid": "must be a string"},
                         metadata={"pattern": "^([A-Za-z0-9_-]{1,64})?$" if optional else NAME_PATTERN,
                                   **kwargs.pop("metadata", {})}, **kwargs)
        self.optional = optional

    def _deserialize(self, value, attr, data, **kwargs) -> str | None:
        value = super()._deserialize(value, attr, data, **kwargs)
        if value == "" and self.optional:
            return None
        if not NAME.fullmatch(value):
            raise ValidationError(f"{value!r} must be {_NAME_RULE}")
        return value


class StrictBoolean(fields.Boolean):
    """true or false, and nothing that merely looks like one ("no", 0, 1)."""

    def _deserialize(self, value, attr, data, **kwargs) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class FormText(fields.String):
    """A free-text form field, stored and shown as is: bounded, no control characters
    (`lines`: newlines and tabs allowed)."""

    def __init__(self, max_length: int, lines: bool = False, **kwargs) -> None:
        super().__init__(load_default="", validate=validate.Length(max=max_length), **kwargs)
        self.forbidden = _CONTROL_BUT_LINES if lines else _CONTROL

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        value = super()._deserialize(value, attr, data, **kwargs)
        if self.forbidden.search(value):
            raise ValidationError("must not hold control characters")
        return value


# --- requests ------------------------------------------------------------------------------------

class StartSchema(Body):
    avatar_id = AvatarName(metadata={"description": "the user's id, e.g. demo_user_1; without avatar_name, "
                                                    "the part before '_user_' names the avatar"})
    avatar_name = AvatarName(optional=True, metadata={"description": "the avatar to run; empty or absent: "
                                                                     "from avatar_id"})


class DisconnectSchema(Body):
    """One of the two names the instance."""
    avatar_name = AvatarName(required=False, metadata={"description": "the avatar (or an instance id)"})
    avatar_id = AvatarName(required=False, metadata={"description": "used when avatar_name is absent"})

    @validates_schema
    def one_given(self, data: dict, **kwargs) -> None:
        if not data.get("avatar_name") and not data.get("avatar_id"):
            raise ValidationError("missing avatar_name or avatar_id")


class StopSchema(Body):
    avatar_id = AvatarName(metadata={"description": "the instance's id or the avatar's name; a joiner's id "
                                                    "is refused (409) unless force is false"})
    force = StrictBoolean(load_default=True, metadata={
        "description": "true (default): stop now; false: a disconnect that stops at 0 connections"})


class RestartSchema(Body):
    avatar_id = AvatarName(metadata={"description": "an instance id or an avatar name"})


class RegisterSchema(Body):
    """A multipart form: the file and what to record about the avatar."""
    avatar_name = AvatarName(validate=validate.NoneOf(ROUTE_WORDS, error="{input!r} is a word of the API's paths"),
                             metadata={"not": {"enum": list(ROUTE_WORDS)}})
    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary",
                                               "description": "a photo or a video of one face"},
                      error_messages={"required": "missing the file (multipart field 'file')",
                                      "null": "missing the file (multipart field 'file')"})
    user_id = FormText(128, metadata={"description": "the owner, recorded as is"})
    description = FormText(2000, lines=True)
    tts_model = FormText(64, metadata={"description": "a voice model (GET /tts); absent: the default"})
    timbre = FormText(128, metadata={"description": "the voice of that model"})
    asr_model = FormText(64, metadata={"description": f"what recognises the viewers' speech: one of "
                                                      f"{', '.join(asr_models.MODELS)}; absent: "
                                                      f"{DEFAULT_CONFIG['asr_model']}"})
    language = FormText(16, metadata={"description": f"what the viewers speak, a language code such as en or fa; "
                                                     f"absent: {DEFAULT_CONFIG['language']}"})
    engine = fields.String(load_default="", validate=validate.OneOf(["", *ENGINES], error=f"unknown engine {{input!r}}: use one of {', '.join(ENGINES)}"),
                           metadata={"description": "absent: puppet"})


# --- answers -------------------------------------------------------------------------------------

class _Envelope(Schema):
    status = fields.String(required=True, metadata={"enum": ["success"]})
    message = fields.String(required=True)


class ErrorSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["error"]})
    message = fields.String(required=True, metadata={"description": "what was wrong, in one line"})
    reason = fields.String(metadata={"enum": ["capacity", "start_failed", "unavailable"],
                                     "description": "on a 503: which kind"})
    detected = fields.String(metadata={"description": "on a 415: what the upload is instead"})
    reasons = fields.List(fields.String(), metadata={"description": "on a 422: why the picture was refused"})
    metrics = fields.Dict(metadata={"description": "on a 422: what was measured"})


class MessageSchema(_Envelope):
    pass


class InstanceSchema(Schema):
    avatar_id = fields.String(required=True, metadata={"description": "the id of the start that created it"})
    real_avatar_name = fields.String(required=True)
    port = fields.Integer(required=True, allow_none=True, metadata={"description": "null once FAILED"})
    gpu = fields.Integer(required=True, metadata={"description": "-1: the CPU"})
    pid = fields.Integer(required=True, allow_none=True)
    state = fields.String(required=True, metadata={"enum": [s.value for s in State]})
    running = fields.Boolean(required=True)
    start_time = fields.String(required=True, metadata={"format": "date-time"})
    uptime_seconds = fields.Float(required=True)
    webrtc_url = fields.String(required=True, allow_none=True)
    connections = fields.Integer(required=True, metadata={"description": "users the backend declared"})
    sessions = fields.Integer(required=True, metadata={"description": "live WebRTC sessions, as the worker said"})
    restarts = fields.Integer(required=True)
    error = fields.String(required=True, allow_none=True)
    host = fields.String(required=True, allow_none=True, metadata={"description": "the host it is placed on"})


class StartedSchema(InstanceSchema):
    is_new = fields.Boolean(required=True, metadata={"description": "true for the one start that created it"})
    connections = fields.Integer(required=True, metadata={"description": "this caller's count: the n-th user "
                                                                         "to join gets n"})


class StartReplySchema(_Envelope):
    data = fields.Nested(StartedSchema, required=True)


class InstanceReplySchema(_Envelope):
    data = fields.Nested(InstanceSchema, required=True)


class StopReplySchema(_Envelope):
    data = fields.Nested(InstanceSchema, metadata={"description": "present when it stays up (force false)"})


class InstanceListSchema(_Envelope):
    data = fields.List(fields.Nested(InstanceSchema), required=True)
    count = fields.Integer(required=True)


class MemorySchema(Schema):
    total_gb = fields.Float(required=True)
    used_gb = fields.Float(required=True)
    free_gb = fields.Float(required=True)
    usage_percent = fields.Float(required=True)


class GpuSchema(Schema):
    index = fields.Integer(required=True)
    name = fields.String(required=True)
    total_mb = fields.Integer(required=True)
    used_mb = fields.Integer(required=True)
    free_mb = fields.Integer(required=True)
    reserved_mb = fields.Integer(required=True, metadata={"description": "held for instances still starting"})
    instances = fields.Integer(required=True)
    # The existing manager's names; null where NVML cannot say.
    gpu_id = fields.Integer(required=True)
    memory = fields.Nested(MemorySchema, required=True)
    temperature_celsius = fields.Integer(required=True, allow_none=True)
    gpu_utilization_percent = fields.Integer(required=True, allow_none=True)
    power_draw_watts = fields.Float(required=True, allow_none=True)
    power_limit_watts = fields.Float(required=True, allow_none=True)


class ManagerStatusSchema(Schema):
    running = fields.Integer(required=True)
    instances = fields.Integer(required=True)
    max = fields.Integer(required=True)
    available = fields.Integer(required=True)
    utilization = fields.String(required=True)
    states = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    gpu_distribution = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    total_connections = fields.Integer(required=True)
    shared_avatars = fields.Integer(required=True)
    avatar_map = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    avatars = fields.List(fields.Nested(InstanceSchema), required=True,
                          metadata={"description": "every record, FAILED ones too"})
    supervisor = fields.String(required=True, allow_none=True)
    version = fields.String(required=True)


class HostSchema(Schema):
    id = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["live", "lost"]})
    address = fields.String(required=True, metadata={"description": "where the API reaches its workers"})
    public_host = fields.String(required=True, metadata={"description": "where clients reach them"})
    max = fields.Integer(required=True)
    instances = fields.Integer(required=True)
    gpus = fields.List(fields.Nested(GpuSchema), required=True, metadata={"description": "as it last said"})
    gpu_note = fields.String(required=True, allow_none=True)
    lease_seconds_left = fields.Float(required=True)


class StatusDataSchema(Schema):
    manager = fields.Nested(ManagerStatusSchema, required=True)
    gpu = fields.List(fields.Nested(GpuSchema), required=True, metadata={"description": "this host's"})
    gpu_note = fields.String(required=True, allow_none=True, metadata={"description": "why no GPU is listed"})
    hosts = fields.List(fields.Nested(HostSchema), required=True, metadata={"description": "the fleet's hosts"})


class StatusReplySchema(_Envelope):
    data = fields.Nested(StatusDataSchema, required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["healthy"]})
    service = fields.String(required=True)
    version = fields.String(required=True)


class ReadyDataSchema(Schema):
    store = fields.String(required=True, metadata={"enum": ["sqlite", "redis"]})


class ReadyReplySchema(_Envelope):
    data = fields.Nested(ReadyDataSchema, required=True)


class TtsServerSchema(Schema):
    model = fields.String(required=True)
    port = fields.Integer(required=True)
    running = fields.Boolean(required=True)
    uptime_seconds = fields.Float(required=True, allow_none=True)


class TtsReplySchema(_Envelope):
    data = fields.List(fields.Nested(TtsServerSchema), required=True)
    count = fields.Integer(required=True)


class ConsoleConfigSchema(Schema):
    chat = fields.Boolean(required=True)
    ice_servers = fields.List(fields.Dict(), required=True)
    connect_timeout = fields.Float(required=True)
    tts_models = fields.List(fields.String(), required=True)
    asr_models = fields.List(fields.String(), required=True)
    max_upload_bytes = fields.Integer(required=True)
    version = fields.String(required=True)


class ConsoleConfigReplySchema(_Envelope):
    data = fields.Nested(ConsoleConfigSchema, required=True)


class AvatarRecordSchema(Schema):
    """The registry's record (source, faces, quality, ... besides these)."""
    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)
    engine = fields.String()
    tts_model = fields.String()
    timbre = fields.String()
    asr_model = fields.String()
    language = fields.String()
    preview_url = fields.String(required=True)
    registered = fields.Boolean(metadata={"description": "false: a folder put in place by hand"})
    digest = fields.String(metadata={"description": "of the prepared folder (sha256:HEX), which hosts that download "
                                                    "it check; none for a folder put in place by hand"})


class AvatarReplySchema(_Envelope):
    data = fields.Nested(AvatarRecordSchema, required=True)


class AvatarListSchema(_Envelope):
    data = fields.List(fields.Nested(AvatarRecordSchema), required=True)
    count = fields.Integer(required=True)


class JobSchema(Schema):
    job_id = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["queued", "preparing"]})
    status_url = fields.String(required=True)


class JobReplySchema(_Envelope):
    data = fields.Nested(JobSchema, required=True)


SCHEMAS = (StartSchema, DisconnectSchema, StopSchema, RestartSchema, RegisterSchema, ErrorSchema, MessageSchema,
           InstanceSchema, StartedSchema, StartReplySchema, InstanceReplySchema, StopReplySchema, InstanceListSchema,
           MemorySchema, GpuSchema, ManagerStatusSchema, HostSchema, StatusDataSchema, StatusReplySchema, HealthSchema,
           ReadyDataSchema, ReadyReplySchema, TtsServerSchema, TtsReplySchema, ConsoleConfigSchema,
           ConsoleConfigReplySchema, AvatarRecordSchema, AvatarReplySchema, AvatarListSchema, JobSchema,
           JobReplySchema)


# --- the relay (relay_routes.py): the worker's own bodies, and its error with the manager's reason --

class WorkerErrorSchema(worker_api.ErrorSchema):
    reason = fields.String(metadata={"enum": ["capacity", "start_failed", "unavailable"],
                                     "description": "on a 503 of the start a relayed /offer made: which kind"})


SCHEMAS += (worker_api.OfferSchema, worker_api.AnswerSchema, worker_api.HumanSchema,
            worker_api.HumanAudioSchema, worker_api.SessionRequestSchema, WorkerErrorSchema)


# The error answers, referred to by the routes as '#/components/responses/NAME'.
RESPONSES = error_responses({
    "BadRequest": "bad input; nothing was changed",
    "Unauthorized": "API_TOKEN is set and the Authorization header does not carry it",
    "NotFound": "no such avatar, instance or job",
    "Conflict": "the request contradicts what runs; nothing was changed",
    "TooLarge": "the body is over MAX_JSON_BYTES (or MAX_AVATAR_FILE_SIZE for an upload)",
    "Unavailable": "capacity (MAX_AVATARS with nothing idle to evict, or GPU memory), a start that "
                   "failed, no supervisor, or the store down; `reason` says which",
})
