"""OpenAPI 3 documents generated from the code, with apispec.

Each documented route carries its operation in its docstring, as YAML after a line `---`
(apispec's convention); request and response bodies refer to marshmallow schemas by name
(`$ref: '#/components/schemas/Human'` or `schema: Human`). A route without `---` stays out of the
document. The same schemas validate the bodies (`load`), so the document cannot drift from what
the service accepts.
"""
from __future__ import annotations

import re
from typing import Iterable

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.yaml_utils import load_operations_from_docstring
from marshmallow import EXCLUDE, Schema, ValidationError

OPENAPI_VERSION = "3.0.3"


class Body(Schema):
    """A request body: fields it does not know are ignored, as clients of LiveTalking send extras."""

    class Meta:
        unknown = EXCLUDE


def _spec(title: str, version: str, schemas: Iterable[type[Schema]], plugins=()) -> APISpec:
    spec = APISpec(title=title, version=version, openapi_version=OPENAPI_VERSION,
                   plugins=[*plugins, MarshmallowPlugin()])
    for schema in schemas:
        spec.components.schema(schema_name(schema), schema=schema)
    return spec


def schema_name(schema: type[Schema]) -> str:
    """HumanSchema -> Human: the name routes refer to."""
    return schema.__name__.removesuffix("Schema")


def aiohttp_document(app, title: str, version: str, schemas: Iterable[type[Schema]],
                     parameters: dict[str, dict] | None = None) -> dict:
    """The document of an aiohttp application, from its router and its handlers' docstrings.
    `parameters`: parameter objects by name, which operations list by that name (`parameters: [Language]`)."""
    spec = _spec(title, version, schemas)
    for name, parameter in (parameters or {}).items():
        spec.components.parameter(name, parameter["in"], parameter)
    for route in app.router.routes():
        method = route.method.lower()
        operations = load_operations_from_docstring(route.handler.__doc__ or "")
        if method in operations:
            spec.path(path=route.resource.canonical, operations={method: operations[method]})
    return spec.to_dict()


def flask_document(app, title: str, version: str, schemas: Iterable[type[Schema]]) -> dict:
    """The document of a Flask application, from its URL rules and its views' docstrings."""
    from apispec_webframeworks.flask import FlaskPlugin

    spec = _spec(title, version, schemas, plugins=[FlaskPlugin()])
    with app.test_request_context():
        for endpoint, view in app.view_functions.items():
            if load_operations_from_docstring(view.__doc__ or ""):
                spec.path(view=view, app=app)
    return spec.to_dict()


def error_responses(descriptions: dict[str, str], schema: str = "Error") -> dict:
    """Named error answers for components/responses (routes refer to '#/components/responses/NAME'),
    each a JSON body of the service's error schema."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {name: {"description": description, "content": {"application/json": {"schema": ref}}}
            for name, description in descriptions.items()}


def load(schema: Schema, data: object) -> dict:
    """The body checked against its schema; ValueError with a one-line reason when it is not."""
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValueError(describe(exc.messages)) from None


def describe(messages: object, prefix: str = "") -> str:
    """marshmallow's nested error messages as one line: 'text: Missing data for required field.'

    Messages that already name their field ('text must be a non-empty string', 'unknown voice 7')
    are kept as they are rather than read 'text: text must be ...'.
    """
    if isinstance(messages, dict):
        return "; ".join(describe(v, f"{prefix}{k}." if not isinstance(v, (list, str)) else f"{prefix}{k}")
                         for k, v in messages.items())
    said = " ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
    if not prefix or _names_field(said, prefix):
        return said
    return f"{prefix}: {said}"


def _names_field(message: str, path: str) -> bool:
    field = path.rsplit(".", 1)[-1]
    return re.search(rf"(?<![\w.]){re.escape(field)}(?!\w)", message) is not None
