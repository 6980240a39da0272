"""The gateway's OpenAPI document: a valid OpenAPI 3.1 document, every route in it and nothing
else, and the requests the OpenAI SDK and text-embeddings-inference clients send valid under
it, while the requests the gateway refuses are not."""

from __future__ import annotations

import base64
import json

import httpx2
import jsonschema
import numpy as np
import openai
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from fusedembed_client.gateway import Settings, create_app
from fusedembed_client.gateway.openapi import document


@pytest.fixture(scope="module", params=[False, True], ids=["open", "keyed"])
def doc(request) -> dict:
    return document(request.param)


def request_schema(doc: dict, path: str) -> jsonschema.Validator:
    """A validator of ``path``'s POST body, its $refs resolved in the document."""
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    whole = {**schema, "components": doc["components"]}
    return jsonschema.Draft202012Validator(whole)


def test_the_document_is_valid_openapi_31(doc):
    validate(doc)
    assert doc["openapi"] == "3.1.0"


def test_every_route_is_documented_and_nothing_else(doc):
    app = create_app(Settings())
    served = {(r.path.replace("{model:path}", "{model}"), m.lower())
              for r in app.routes if isinstance(r, Route) for m in r.methods if m != "HEAD"}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented


def test_the_key_is_required_everywhere_but_health():
    keyed, open_ = document(True), document(False)
    assert keyed["security"] == [{"bearer": []}]
    assert keyed["paths"]["/health"]["get"]["security"] == []
    assert "401" in keyed["paths"]["/v1/embeddings"]["post"]["responses"]
    assert "security" not in open_ and "401" not in open_["paths"]["/embed"]["post"]["responses"]


def sdk_bodies(**kwargs) -> dict:
    """The body the OpenAI Python SDK sends for ``embeddings.create(**kwargs)``."""
    seen = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        vector = base64.b64encode(np.zeros(4, "<f4").tobytes()).decode()
        return httpx2.Response(200, json={
            "object": "list", "model": "fusedembed", "usage": {"prompt_tokens": 1,
                                                               "total_tokens": 1},
            "data": [{"object": "embedding", "index": 0, "embedding": vector}]})

    client = openai.OpenAI(base_url="http://gateway/v1", api_key="k", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    client.embeddings.create(**kwargs)
    return seen[0]


@pytest.mark.parametrize("kwargs", [
    {"model": "fusedembed", "input": "one text"},
    {"model": "fusedembed", "input": ["a", "b"], "dimensions": 256, "user": "u"},
    {"model": "fusedembed-cached", "input": ["a"], "encoding_format": "float"},
    {"model": "fusedembed", "input": ["a"], "extra_body": {"timestamp": 1_700_000_000,
                                                           "input_type": "query"}},
])
def test_the_openai_sdks_requests_are_valid(doc, kwargs):
    request_schema(doc, "/v1/embeddings").validate(sdk_bodies(**kwargs))


@pytest.mark.parametrize("path,body", [
    ("/embed", {"inputs": "one text"}),
    ("/embed", {"inputs": ["a", "b"], "normalize": True, "truncate": False,
                "truncation_direction": "Right"}),
    ("/embed_sparse", {"inputs": ["a"], "truncate": True}),
])
def test_text_embeddings_inference_requests_are_valid(doc, path, body):
    request_schema(doc, path).validate(body)


@pytest.mark.parametrize("path,body", [
    ("/v1/embeddings", {"model": "fusedembed"}),  # no input
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}),
    ("/v1/embeddings", {"input": "a", "colour": "red"}),  # not a field
    ("/embed", {"inputs": 3}),
    ("/embed_sparse", {"inputs": ["a"], "sparse_top_k": -1}),
])
def test_requests_the_gateway_refuses_are_invalid(doc, path, body):
    with pytest.raises(jsonschema.ValidationError):
        request_schema(doc, path).validate(body)
