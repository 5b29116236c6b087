"""contracts.openapi: bodies checked against their schemas, errors said in one line."""
import pytest
from marshmallow import fields

from contracts.openapi import Body, describe, load


class GreetingSchema(Body):
    text = fields.String(required=True, error_messages={"required": "text must be a non-empty string"})
    count = fields.Integer()
    to = fields.Nested(Body.from_dict({"name": fields.String(required=True)}))


def test_a_valid_body_loads_and_unknown_fields_are_ignored():
    assert load(GreetingSchema(), {"text": "hi", "count": 2, "extra": [1]}) == {"text": "hi", "count": 2}


@pytest.mark.parametrize("body, reason", [
    (["text", "hi"], "the body must be a JSON object"),
    (None, "the body must be a JSON object"),
    ({}, "text must be a non-empty string"),                         # names its field: kept as it is
    ({"text": "hi", "count": "many"}, "count: Not a valid integer."),
    ({"text": "hi", "to": {}}, "to.name: Missing data for required field."),
    ({"count": "x"}, "text must be a non-empty string; count: Not a valid integer."),
])
def test_a_bad_body_is_one_line_naming_each_field(body, reason):
    with pytest.raises(ValueError) as refused:
        load(GreetingSchema(), body)
    assert str(refused.value) == reason


def test_a_field_named_inside_another_word_still_gets_its_prefix():
    assert describe({"id": ["Not valid: the ids differ."]}) == "id: Not valid: the ids differ."
    assert describe({"voice": ["unknown voice 'x'"]}) == "unknown voice 'x'"
