"""The gateway's OpenAPI 3.1 document, generated from the pydantic models its routes validate
requests with (``app.py``) and the ones here that describe its answers, and the interactive
docs page: Swagger UI, which the reader's browser loads from jsDelivr as FastAPI's docs page
does (the gateway itself fetches nothing; without that CDN /docs is blank, /openapi.json is
whole)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from fusedembed_client.gateway.app import EmbeddingsRequest, EmbedRequest, EmbedSparseRequest

VERSION = "0.1.0"


# --- answers ------------------------------------------------------------------------------


class Embedding(BaseModel):
    object: str = "embedding"
    index: int
    # floats, or with encoding_format "base64" the little-endian float32 bytes in base64
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    dimensions: int
    supported_dimensions: list[int]


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: int | str


class OpenAIError(BaseModel):
    """The error of the OpenAI routes, in OpenAI's shape."""

    error: OpenAIErrorDetail


class TEIError(BaseModel):
    """The error of the text-embeddings-inference routes, in its shape."""

    error: str
    error_type: str


class SparseValue(BaseModel):
    index: int = Field(description="a vocabulary id of E6's tokenizer (tok_bert_uncased)")
    value: float


class Info(BaseModel):
    """GET /info: text-embeddings-inference's fields and the gateway's limits."""

    model_config = ConfigDict(extra="allow")

    model_id: str
    max_client_batch_size: int
    max_concurrent_requests: int
    max_body_bytes: int
    timeout_s: float
    dimensions: int | None = None
    models: list[str] | None = None


@dataclass(frozen=True)
class Operation:
    summary: str
    request: type[BaseModel] | None = None
    answer: Any = None  # a model, a list of one, or a media type (str) for a non-JSON answer
    error: type[BaseModel] | None = None


OPENAI_ERRORS = (400, 401, 404, 413, 422, 429, 503, 504)
TEI_ERRORS = (400, 401, 413, 422, 424, 429, 503, 504)

EMBEDDINGS = Operation("Embed texts or images (OpenAI's embeddings API)", EmbeddingsRequest,
                       EmbeddingsResponse, OpenAIError)
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/v1/embeddings", "post"): EMBEDDINGS,
    ("/embeddings", "post"): EMBEDDINGS,
    ("/v1/models", "get"): Operation("The served models (OpenAI's models API)", None,
                                     ModelList, OpenAIError),
    ("/v1/models/{model}", "get"): Operation("One served model", None, ModelCard, OpenAIError),
    ("/embed", "post"): Operation("Embed texts (text-embeddings-inference's /embed)",
                                  EmbedRequest, [list[float]], TEIError),
    ("/embed_sparse", "post"): Operation(
        "E6's SPLADE terms of each text (text-embeddings-inference's /embed_sparse)",
        EmbedSparseRequest, [list[SparseValue]], TEIError),
    ("/health", "get"): Operation("200 when Triton is ready, else 503 (never needs a key)",
                                  None, None, TEIError),
    ("/info", "get"): Operation("What is served and the gateway's limits", None, Info),
    ("/metrics", "get"): Operation("The gateway's Prometheus metrics", None,
                                   "text/plain; version=0.0.4"),
    ("/openapi.json", "get"): Operation("This document", None, "application/json"),
    ("/docs", "get"): Operation("This document in Swagger UI", None, "text/html"),
}


def document(keyed: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``keyed``: every operation but /health needs the bearer key."""
    requests = {op.request for op in OPERATIONS.values() if op.request is not None}
    answers = {op.answer for op in OPERATIONS.values() if isinstance(op.answer, type)}
    answers |= {op.error for op in OPERATIONS.values() if op.error is not None}
    answers |= {SparseValue}
    keys, defs = models_json_schema(
        [(m, "validation") for m in sorted(requests, key=lambda m: m.__name__)]
        + [(m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}")
    refs = {model: schema for (model, _), schema in keys.items()}
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), op in OPERATIONS.items():
        entry: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(path, method),
                                 "responses": {"200": _answer(op.answer, refs)}}
        if op.request is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[op.request]}}}
        if "{model}" in path:
            entry["parameters"] = [{"name": "model", "in": "path", "required": True,
                                    "schema": {"type": "string"}}]
        if op.error is not None:
            codes = OPENAI_ERRORS if op.error is OpenAIError else TEI_ERRORS
            if path == "/health":
                codes = (503,)
            elif not keyed:
                codes = tuple(c for c in codes if c != 401)
            for code in codes:
                entry["responses"][str(code)] = {
                    "description": _REASONS[code],
                    "content": {"application/json": {"schema": refs[op.error]}}}
        if keyed and path == "/health":
            entry["security"] = []
        paths.setdefault(path, {})[method] = entry
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "fusedembed gateway", "version": VERSION,
                 "description": "OpenAI-compatible and text-embeddings-inference-style "
                                "routes in front of the fusedembed Triton service."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if keyed:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


_REASONS = {200: "OK", 400: "Bad request", 401: "No API key or a wrong one", 404: "Not found",
            413: "Too large", 422: "Invalid field", 424: "Triton failed",
            429: "Overloaded: retry later", 503: "Triton unavailable",
            504: "Timed out waiting for Triton"}


def _operation_id(path: str, method: str) -> str:
    words = [w.strip("{}") for w in path.split("/") if w]
    return "_".join([method, *words]).replace(".", "_")


def _answer(answer: Any, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    if answer is None:
        return {"description": "OK (no body)"}
    if isinstance(answer, str):
        return {"description": "OK", "content": {answer: {}}}
    if isinstance(answer, list):  # [list[float]] or [list[Model]]: one item per input
        inner = answer[0].__args__[0]
        item = refs[inner] if isinstance(inner, type) and issubclass(inner, BaseModel) \
            else {"type": "number"}
        schema = {"type": "array", "items": {"type": "array", "items": item}}
    else:
        schema = refs[answer]
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"


def docs_page() -> str:
    """Swagger UI over /openapi.json."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fusedembed gateway</title>
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{SWAGGER_UI}/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>
"""
