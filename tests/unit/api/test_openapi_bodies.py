"""``/openapi.json`` describes the bodies of the routes that read their request by hand
(multipart with file parts, JSON or multipart), so clients and the fuzz run send them."""

from __future__ import annotations

from typing import Any

import pytest

from sdserve.api.stability.v2_schemas import InpaintRequest
from tests.unit.api.conftest import MakeApp

BINARY = {"type": "string", "format": "binary"}


@pytest.fixture
def spec(make_app: MakeApp) -> dict[str, Any]:
    response = make_app().client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def body(spec: dict[str, Any], path: str, media_type: str) -> dict[str, Any]:
    operation = spec["paths"][path]["post"]
    assert operation["requestBody"]["required"] is True
    schema: dict[str, Any] = operation["requestBody"]["content"][media_type]["schema"]
    return schema


@pytest.mark.parametrize("prefix", ["/v1", "/v1/openai"])
def test_openai_images_bodies(spec: dict[str, Any], prefix: str) -> None:
    generations = body(spec, f"{prefix}/images/generations", "application/json")
    assert {"prompt", "n", "size", "response_format"} <= set(generations["properties"])
    edits = body(spec, f"{prefix}/images/edits", "multipart/form-data")
    assert edits["properties"]["image"] == BINARY
    assert edits["properties"]["mask"] == BINARY
    assert set(edits["required"]) == {"image", "prompt"}
    # a text part: a number or nothing, never null
    assert edits["properties"]["seed"]["type"] == "integer"
    variations = body(spec, f"{prefix}/images/variations", "multipart/form-data")
    assert variations["required"] == ["image"]


def test_deepinfra_takes_json_or_multipart(spec: dict[str, Any]) -> None:
    path = "/v1/inference/{owner}/{name}"
    as_json = body(spec, path, "application/json")
    assert as_json["properties"]["image"]["anyOf"][0]["type"] == "string"  # a URL
    form = body(spec, path, "multipart/form-data")
    assert form["properties"]["image"] == BINARY  # a file
    assert form["required"] == ["prompt"]


def test_stability_v1_multipart_names_the_prompt_parts(spec: dict[str, Any]) -> None:
    masking = body(spec, "/v1/generation/{engine_id}/image-to-image/masking", "multipart/form-data")
    assert "text_prompts" not in masking["properties"]
    assert masking["properties"]["text_prompts[0][text]"]["type"] == "string"
    assert masking["properties"]["extras"]["type"] == "string"  # JSON in one part
    assert set(masking["required"]) == {"init_image", "mask_source", "text_prompts[0][text]"}
    text = body(spec, "/v1/generation/{engine_id}/text-to-image", "application/json")
    assert text["required"] == ["text_prompts"]
    assert text["properties"]["text_prompts"]["items"]["properties"]["text"]["type"] == "string"


def test_stability_v2_parts_are_the_fields_the_route_reads(spec: dict[str, Any]) -> None:
    inpaint = body(spec, "/v2beta/stable-image/edit/inpaint", "multipart/form-data")
    expected = {*InpaintRequest.model_fields, *InpaintRequest.file_parts}
    assert set(inpaint["properties"]) == expected
    assert set(inpaint["required"]) == {"prompt", "image"}
    core = body(spec, "/v2beta/stable-image/generate/core", "multipart/form-data")
    assert core["required"] == ["prompt"]
