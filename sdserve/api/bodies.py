"""Request bodies in the OpenAPI for routes that read their ``Request`` by hand.

Several dialects parse the body themselves (multipart with file parts, JSON or multipart on
one route, fields that name a nested part such as ``text_prompts[0][text]``), so FastAPI
sees no body parameter and ``/openapi.json`` would show none: clients and the fuzz run
(tests/integration/api/test_schemathesis.py) would never send one. :func:`request_body`
describes such a body from the same pydantic model the route validates with, given to the
route as ``openapi_extra``; the description is documentation only and never changes how a
request is read.

On the wire a multipart part is text or a file: a form field keeps its scalar type (the
route's model coerces ``"4"`` to 4), loses ``null`` (a part is sent or left out), and a list
or object field is one text part holding JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

#: A file part: any bytes (the route decodes and checks them).
FILE_PART: dict[str, Any] = {"type": "string", "format": "binary"}
MULTIPART = "multipart/form-data"
JSON = "application/json"


def request_body(
    *,
    json: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    files: Mapping[str, bool] | None = None,
    parts: Mapping[str, dict[str, Any]] | None = None,
    omit: Iterable[str] = (),
    require: Iterable[str] = (),
) -> dict[str, Any]:
    """``openapi_extra`` declaring a required body: ``json``'s schema as
    ``application/json``, and/or ``multipart/form-data`` with ``form``'s fields (less
    ``omit``), the file parts ``files`` (name → required) and the extra text ``parts``
    (name → schema); ``require`` names the fields and parts the route requires beyond
    what the model requires."""
    content: dict[str, Any] = {}
    if json is not None:
        content[JSON] = {"schema": model_schema(json)}
    if form is not None or files or parts:
        content[MULTIPART] = {
            "schema": form_schema(form, files or {}, parts or {}, set(omit), set(require))
        }
    return {"requestBody": {"required": True, "content": content}}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON Schema with its ``$defs`` written in place (an operation's body
    cannot point into a schema's own ``$defs``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline(schema, defs)
    return inlined


def form_schema(
    model: type[BaseModel] | None,
    files: Mapping[str, bool],
    parts: Mapping[str, dict[str, Any]],
    omit: set[str],
    require: set[str],
) -> dict[str, Any]:
    """The multipart object: ``model``'s fields as text parts, then ``parts`` and ``files``."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    if model is not None:
        schema = model_schema(model)
        needed = set(schema.get("required", [])) | require
        for name, field in schema.get("properties", {}).items():
            if name in omit:
                continue
            properties[name] = _as_part(field)
            if name in needed:
                required.append(name)
    for name, part in parts.items():
        properties[name] = part
        if name in require:
            required.append(name)
    for name, is_required in files.items():
        properties[name] = dict(FILE_PART)
        if is_required:
            required.append(name)
    object_schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        object_schema["required"] = required
    return object_schema


def _as_part(field: dict[str, Any]) -> dict[str, Any]:
    """A field's schema as one text part: ``null`` dropped, a list or object as JSON text."""
    options = field.get("anyOf")
    if options is not None:
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            merged = {key: value for key, value in field.items() if key != "anyOf"}
            field = {**merged, **kept[0]}
            if field.get("default") is None:
                field.pop("default", None)  # a part left out, not a null one
    if field.get("type") in ("object", "array"):
        described = {"type": "string", "contentMediaType": JSON}
        if "description" in field:
            described["description"] = field["description"]
        return described
    return field


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node
