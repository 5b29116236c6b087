"""The ASR server's response bodies as marshmallow schemas, for its OpenAPI document (the error
body: contracts.errors)."""
from __future__ import annotations

from marshmallow import Schema, fields


class TranscriptSchema(Schema):
    text = fields.String(required=True, metadata={"description": "What was said; empty when nothing was heard."})
    language = fields.String(required=True, metadata={"description": "The language code the model used."})
    seconds = fields.Float(required=True, metadata={"description": "Length of the audio."})


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})
    model = fields.String(required=True)
    languages = fields.List(fields.String(), required=True, allow_none=True,
                            metadata={"description": "The language codes the model knows; null: any."})
    uptime_seconds = fields.Float(required=True)
