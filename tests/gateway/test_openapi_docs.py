"""The OpenAPI documents describe every generation body, old and new, and their reading page is served from
the gateway itself (no CDN): checked through both listeners' HTTP answers."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import AsyncTestClient

GENERATION_BODIES = {
    ("/generate", "post"): "application/json",
    ("/tasks", "post"): "application/json",
    ("/generate-with-file", "post"): "multipart/form-data",
    ("/v1/images/generations", "post"): "application/json",
    ("/v1/images/edits", "post"): "multipart/form-data",
    ("/v1/chat/completions", "post"): "application/json",
    ("/v1beta/models/{model_action}", "post"): "application/json",
    ("/v1/messages", "post"): "application/json",
}


def resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


async def test_every_generation_endpoint_documents_its_body(api: AsyncTestClient[Any]) -> None:
    document = (await api.get("/schema/openapi.json")).json()
    for (path, method), media in GENERATION_BODIES.items():
        body = resolved(document, document["paths"][path][method]["requestBody"]["content"][media]["schema"])
        assert "prompt" in body["properties"] or "messages" in body["properties"] or "contents" in body["properties"], path
    old = document["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert old["required"] == ["prompt"] and "gemini-3-pro-image" in old["properties"]["model"]["examples"]
    form = document["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image[]"]["items"]["format"] == "binary"
    answer = document["paths"]["/generate"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"success", "generated_images", "image_hashes"} <= resolved(document, answer)["properties"].keys()
    assert (await api.get("/schema/openapi.yaml")).status_code == 200


async def test_the_reading_page_loads_nothing_from_elsewhere(api: AsyncTestClient[Any]) -> None:
    for page in ("/schema", "/schema/redoc"):
        html = (await api.get(page)).text
        assert "<script src=\"/schema/assets/redoc.standalone.js\"" in html
        assert not re.search(r"(src|href)=\"https?://", html), html[:500]
    script = await api.get("/schema/assets/redoc.standalone.js")
    assert script.status_code == 200 and b"Redoc" in script.content[:100_000] and len(script.content) > 500_000
    assert (await api.get("/schema/swagger")).status_code == 404  # its scripts would come from a CDN
