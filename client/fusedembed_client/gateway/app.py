"""The routes: OpenAI's /v1/embeddings and /v1/models, text-embeddings-inference's /embed,
/embed_sparse, /health and /info, /metrics, and the OpenAPI document (/openapi.json, /docs).
Starlette, with pydantic for the request bodies."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fusedembed_client.client import BLOCKS, GateControls
from fusedembed_client.gateway.backend import PREFIX, Batch, GatewayError, Triton
from fusedembed_client.gateway.settings import Settings
from fusedembed_client.gateway.tracing import RequestIds, request_id, trace_id

LOG = logging.getLogger("fusedembed.gateway")
TOKEN_IDS = ("input: token-id arrays are not supported; send text (a string or a list of "
             "strings)")


class EmbeddingsRequest(BaseModel):
    """POST /v1/embeddings: OpenAI's fields, NIM's ``input_type`` and ``truncate``, and ours
    (``timestamp`` and the gate controls), all optional but ``input``."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[Any]
    model: str = PREFIX
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    input_type: Literal["query", "passage"] | None = None
    # NIM's: NONE refuses a text over a model's token limit; END (default) cuts its end.
    truncate: Literal["NONE", "END"] = "END"
    # Unix seconds of every text, or one per text (default: now).
    timestamp: int | list[int] | None = None
    # E4's session of every text or one per text (default: the shared session ""), and its
    # position in the session, likewise (default: the timestamp).
    session: str | list[str] | None = None
    sequence: int | list[int] | None = None
    # infinity's: "image" makes every input an image, as a data URI
    # ("data:image/png;base64,..."), embedded by fused_image.
    modality: Literal["text", "image"] = "text"
    top_k: int | None = None
    temperature: float | None = None
    focus: dict[str, float] | None = None
    missing: list[str] | None = None

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list):
            if not value:
                raise ValueError("input: the list is empty")
            if any(isinstance(v, (int, list)) and not isinstance(v, bool) for v in value):
                raise ValueError(TOKEN_IDS)
            bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
            if bad is not None:
                raise ValueError(f"input[{bad}]: expected a string")
        return value


DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]+(?:;[^;,]*)*;base64,(.*)", re.DOTALL)


def data_uris(inputs: list[str]) -> list[bytes]:
    """The bytes of image inputs sent as data URIs (``data:image/png;base64,...``); the
    gateway fetches no URL."""
    out = []
    for i, item in enumerate(inputs):
        match = DATA_URI.fullmatch(item)
        if match is None:
            raise GatewayError(422, f"input[{i}]: an image must be a data URI "
                               "(data:image/<type>;base64,...); URLs are not fetched", "input")
        try:
            out.append(base64.b64decode(match.group(1), validate=True))
        except binascii.Error as err:
            raise GatewayError(422, f"input[{i}]: the data URI's base64 is invalid ({err})",
                               "input") from err
    return out


def _per_input(field: str, value: Any, n: int) -> list[Any] | None:
    """A field given once for every input or as a list of one per input (None: absent)."""
    if value is None or not isinstance(value, list):
        return None if value is None else [value] * n
    if len(value) != n:
        raise GatewayError(422, f"{field}: {len(value)} values for {n} inputs", field)
    return value


class EmbedRequest(BaseModel):
    """POST /embed, as text-embeddings-inference takes it."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str]
    # FUSED is unit length by construction: normalize=false returns the same vectors.
    normalize: bool = True
    # text-embeddings-inference's default: a text over a model's token limit is an error.
    truncate: bool = False
    truncation_direction: Literal["Right", "right"] = "Right"
    prompt_name: None = None
    dimensions: int | None = Field(default=None, ge=1)


class EmbedSparseRequest(BaseModel):
    """POST /embed_sparse, as text-embeddings-inference takes it, and ``sparse_top_k``
    (ours): only each text's k heaviest terms."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str]
    truncate: bool = False
    truncation_direction: Literal["Right", "right"] = "Right"
    prompt_name: None = None
    sparse_top_k: int | None = Field(default=None, ge=0)


class Metrics:
    """The gateway's own series, in their own registry (served at /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fusedembed_gateway_requests", "Requests answered",
                                ["route", "model", "status"], registry=r)
        self.latency = Histogram(
            "fusedembed_gateway_request_duration_seconds", "Time to answer a request",
            ["route"], registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.texts = Histogram("fusedembed_gateway_texts_per_request", "Texts per request",
                               ["route"], registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048))
        self.inflight = Gauge("fusedembed_gateway_inflight_texts",
                              "Texts being embedded now", registry=r)
        self.throttled = Counter("fusedembed_gateway_throttled",
                                 "Requests refused with 429 (in-flight limit or Triton's queue)",
                                 ["route"], registry=r)


class Gateway:
    """The routes over one Triton client, with the in-flight limit and the metrics."""

    def __init__(self, settings: Settings, triton: Triton | None = None) -> None:
        self.settings = settings
        self.triton = triton
        self.metrics = Metrics()
        self.inflight = 0  # texts being embedded
        self.body_bytes = 0  # bytes of the request bodies being served
        self.started = time.time()
        self._openapi: bytes | None = None  # the OpenAPI document, made on first request

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        s = self.settings
        if self.triton is None:
            self.triton = Triton(s.triton_url, s.triton_concurrency, s.timeout_s)
        with contextlib.suppress(GatewayError):
            await self.triton.catalog()  # read now when Triton is up; else on first use
        yield
        await self.triton.close()

    def app(self) -> Starlette:
        routes = [Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                  Route("/embeddings", self.embeddings, methods=["POST"]),
                  Route("/v1/models", self.models, methods=["GET"]),
                  Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                  Route("/embed", self.embed, methods=["POST"]),
                  Route("/embed_sparse", self.embed_sparse, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/info", self.info, methods=["GET"]),
                  Route("/metrics", self.prometheus, methods=["GET"]),
                  Route("/openapi.json", self.openapi, methods=["GET"]),
                  Route("/docs", self.docs, methods=["GET"])]
        middleware = [Middleware(RequestIds)]
        if self.settings.api_key:
            middleware.append(Middleware(ApiKey, key=self.settings.api_key))
        return Starlette(routes=routes, middleware=middleware, lifespan=self.lifespan)

    # --- OpenAI -------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        route, model, start = "/v1/embeddings", "", time.perf_counter()
        try:
            body = EmbeddingsRequest.model_validate(await self._body(request))
            texts = [body.input] if isinstance(body.input, str) else body.input
            served, kind = (await self._triton().catalog()).resolve(body.model, body.input_type)
            model = served.id  # a label from the catalog: never a name a client made up
            batch = Batch(texts, self._timestamps(body.timestamp, len(texts)), kind,
                          body.truncate == "END", self._gate(body), body.dimensions,
                          _per_input("session", body.session, len(texts)),
                          _per_input("sequence", body.sequence, len(texts)),
                          data_uris(texts) if body.modality == "image" else None)
            if batch.images is not None:
                vectors = await self._admitted(route, batch, lambda: self._triton().images(
                    served, batch))
                tokens = np.zeros(len(texts), dtype=np.int64)  # images have no tokens
            else:
                vectors, tokens = await self._run(route, batch, served)
            if body.encoding_format == "base64":
                little = vectors.astype("<f4", copy=False)
                data = [{"object": "embedding", "index": i,
                         "embedding": base64.b64encode(v.tobytes()).decode("ascii")}
                        for i, v in enumerate(little)]
            else:
                data = [{"object": "embedding", "index": i, "embedding": v}
                        for i, v in enumerate(vectors)]
            used = int(tokens.sum())
            answer = {"object": "list", "data": data, "model": body.model,
                      "usage": {"prompt_tokens": used, "total_tokens": used}}
            return self._done(route, model, start, 200, answer)
        except ValidationError as err:
            return self._failed(route, model, start, _invalid(err), openai=True)
        except GatewayError as err:
            return self._failed(route, model, start, err, openai=True)
        finally:
            self._release(request)

    async def models(self, _request: Request) -> Response:
        try:
            catalog = await self._triton().catalog()
        except GatewayError as err:
            return _openai_error(err)
        return _json(200, {"object": "list",
                           "data": [m.describe() for m in catalog.models.values()]})

    async def model(self, request: Request) -> Response:
        try:
            served, _ = (await self._triton().catalog()).resolve(
                request.path_params["model"], None)
        except GatewayError as err:
            return _openai_error(err)
        return _json(200, served.describe())

    # --- text-embeddings-inference ------------------------------------------------------

    async def embed(self, request: Request) -> Response:
        async def vectors(body: EmbedRequest, batch: Batch) -> Any:
            served, _ = (await self._triton().catalog()).resolve(PREFIX, None)
            return (await self._run("/embed", batch, served))[0]

        return await self._tei(request, "/embed", EmbedRequest, vectors)

    async def embed_sparse(self, request: Request) -> Response:
        """E6's SPLADE terms of each text: [[{"index", "value"}, ...], ...], by index."""
        async def terms(body: EmbedSparseRequest, batch: Batch) -> Any:
            rows = await self._admitted("/embed_sparse", batch, lambda: self._triton().sparse(
                batch, body.sparse_top_k))
            return [[{"index": int(i), "value": float(w)} for i, w in zip(*row)]
                    for row in rows]

        return await self._tei(request, "/embed_sparse", EmbedSparseRequest, terms)

    async def _tei(self, request: Request, route: str, schema: type[BaseModel],
                   answer: Callable[[Any, Batch], Awaitable[Any]]) -> Response:
        """A text-embeddings-inference route: the body read as ``schema``, its ``inputs`` as
        one batch of passages stamped now, ``answer(body, batch)`` as the reply; errors in
        TEI's shape."""
        start = time.perf_counter()
        try:
            body: Any = schema.model_validate(await self._body(request))
            texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
            if not texts:
                raise GatewayError(422, "inputs: the list is empty", "inputs")
            batch = Batch(texts, self._timestamps(None, len(texts)), "passage", body.truncate,
                          GateControls(), getattr(body, "dimensions", None))
            return self._done(route, PREFIX, start, 200, await answer(body, batch))
        except ValidationError as err:
            return self._failed(route, PREFIX, start, _invalid(err), openai=False)
        except GatewayError as err:
            return self._failed(route, PREFIX, start, err, openai=False)
        finally:
            self._release(request)

    async def health(self, _request: Request) -> Response:
        if await self._triton().ready():
            return Response(status_code=200)
        return _json(503, {"error": f"Triton at {self.settings.triton_url} is not ready",
                           "error_type": "Unhealthy"})

    async def info(self, _request: Request) -> Response:
        s = self.settings
        out: dict[str, Any] = {
            "model_id": PREFIX, "model_sha": None, "model_dtype": "float32",
            "model_type": {"embedding": {"pooling": "fusemoe"}},
            "max_concurrent_requests": s.max_inflight_texts,
            "max_client_batch_size": s.max_inputs, "max_batch_requests": None,
            "max_body_bytes": s.max_body_bytes, "max_inflight_bytes": s.max_inflight_bytes,
            "timeout_s": s.timeout_s,
            "triton_url": s.triton_url, "started": int(self.started)}
        try:
            catalog = await self._triton().catalog()
            out |= {"max_batch_tokens": None, "triton_batch": catalog.batch,
                    "dimensions": catalog.models[PREFIX].dim,
                    "models": list(catalog.models)}
        except GatewayError as err:
            out["triton"] = err.message
        return _json(200, out)

    async def prometheus(self, _request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, _request: Request) -> Response:
        from fusedembed_client.gateway.openapi import document

        if self._openapi is None:
            self._openapi = orjson.dumps(document(bool(self.settings.api_key)))
        return Response(self._openapi, media_type="application/json")

    async def docs(self, _request: Request) -> Response:
        from fusedembed_client.gateway.openapi import docs_page

        return Response(docs_page(), media_type="text/html")

    # --- shared -------------------------------------------------------------------------

    def _triton(self) -> Triton:
        assert self.triton is not None, "the gateway's lifespan has not started"
        return self.triton

    async def _body(self, request: Request) -> Any:
        """The JSON body, refused past max_body_bytes (413) before it is all read, and past
        max_inflight_bytes of all bodies being served (429) unless it is the only one. Its
        bytes stay counted until the answer is made (``_release``)."""
        s = self.settings
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_body_bytes:
            raise GatewayError(413, f"body: {declared} bytes; the limit is {s.max_body_bytes} "
                               "(FUSEDEMBED_GATEWAY_MAX_BODY_BYTES)", kind="payload_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > s.max_body_bytes:
                raise GatewayError(413, f"body: over {s.max_body_bytes} bytes, the limit "
                                   "(FUSEDEMBED_GATEWAY_MAX_BODY_BYTES)", kind="payload_too_large")
            mine = getattr(request.state, "body_bytes", 0)
            if self.body_bytes > mine and self.body_bytes + len(chunk) > s.max_inflight_bytes:
                raise GatewayError(429, f"{self.body_bytes} bytes of requests in flight; the "
                                   f"limit is {s.max_inflight_bytes} "
                                   "(FUSEDEMBED_GATEWAY_MAX_INFLIGHT_BYTES): retry later",
                                   kind="overloaded")
            self.body_bytes += len(chunk)
            request.state.body_bytes = mine + len(chunk)
            chunks.append(chunk)
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as err:
            raise GatewayError(400, f"body: not valid JSON ({err})") from err

    def _release(self, request: Request) -> None:
        self.body_bytes -= getattr(request.state, "body_bytes", 0)
        request.state.body_bytes = 0

    async def _run(self, route: str, batch: Batch, served: Any) -> tuple[np.ndarray, np.ndarray]:
        """Admit the texts under the in-flight limit (429 at once past it), then embed."""
        return await self._admitted(route, batch, lambda: self._triton().embed(served, batch))

    async def _admitted(self, route: str, batch: Batch,
                        work: Callable[[], Awaitable[Any]]) -> Any:
        """``work()`` (Triton's answer for ``batch``) once its texts are admitted under the
        in-flight limit: 413 past max_inputs, 429 at once past the limit."""
        n, s = len(batch.texts), self.settings
        self.metrics.texts.labels(route).observe(n)
        if n > s.max_inputs:
            raise GatewayError(413, f"input: {n} items; the limit is {s.max_inputs} per request",
                               "input", kind="payload_too_large")
        if self.inflight and self.inflight + n > s.max_inflight_texts:
            raise GatewayError(429, f"{self.inflight} texts in flight; {n} more would pass the "
                               f"limit of {s.max_inflight_texts} "
                               "(FUSEDEMBED_GATEWAY_MAX_INFLIGHT_TEXTS): retry later",
                               kind="overloaded")
        self.inflight += n
        self.metrics.inflight.set(self.inflight)
        try:
            return await work()
        finally:
            self.inflight -= n
            self.metrics.inflight.set(self.inflight)

    @staticmethod
    def _timestamps(value: int | list[int] | None, n: int) -> list[int]:
        return _per_input("timestamp", value, n) or [int(time.time())] * n

    @staticmethod
    def _gate(body: EmbeddingsRequest) -> GateControls:
        for field, names in (("focus", body.focus or {}), ("missing", body.missing or [])):
            unknown = [b for b in names if b not in BLOCKS]
            if unknown:
                raise GatewayError(422, f"{field}: unknown block {unknown[0]!r}; blocks are "
                                   "E1 ... E12", field)
        return GateControls(body.top_k, body.temperature, body.focus,
                            tuple(body.missing or ()))

    def _done(self, route: str, model: str, start: float, status: int, answer: Any) -> Response:
        self._count(route, model, start, status)
        return _json(status, answer)

    def _failed(self, route: str, model: str, start: float, err: GatewayError,
                openai: bool) -> Response:
        self._count(route, model, start, err.status)
        if err.status == 429:
            self.metrics.throttled.labels(route).inc()
        return _openai_error(err) if openai else _tei_error(err)

    def _count(self, route: str, model: str, start: float, status: int) -> None:
        m, seconds = self.metrics, time.perf_counter() - start
        m.requests.labels(route, model or "-", str(status)).inc()
        m.latency.labels(route).observe(seconds)
        if status >= 500 or self.settings.access_log:
            LOG.log(logging.WARNING if status >= 500 else logging.INFO,
                    "request_id=%s trace_id=%s route=%s model=%s status=%d seconds=%.3f",
                    request_id() or "-", trace_id() or "-", route, model or "-", status, seconds)


class ApiKey:
    """Every route but /health needs ``Authorization: Bearer <key>``, as the OpenAI SDK sends
    its ``api_key``; else 401 in OpenAI's error shape. The key is compared in constant time."""

    OPEN = frozenset({"/health"})

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN:
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        message = ("Authorization: no API key; send 'Authorization: Bearer <key>'" if not given
                   else "Authorization: the API key is not the gateway's")
        answer = _json(401, {"error": {"message": message, "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}},
                       {"WWW-Authenticate": 'Bearer realm="fusedembed"'})
        await answer(scope, receive, send)


def _invalid(err: ValidationError) -> GatewayError:
    """pydantic's first complaint as a 422 naming the field."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"{field}: not a field of this request"
    elif not message.startswith(field.split(".")[0]):
        message = f"{field}: {message}"
    return GatewayError(422, message, field.split(".")[0])


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status,
                    headers, media_type="application/json")


def _headers(err: GatewayError) -> dict[str, str] | None:
    return {"Retry-After": "1"} if err.status in (429, 503) else None


def _openai_error(err: GatewayError) -> Response:
    return _json(err.status, {"error": {"message": err.message, "type": err.kind,
                                        "param": err.param, "code": err.status}},
                 _headers(err))


# text-embeddings-inference's error types, by status.
TEI_TYPES = {413: "Validation", 422: "Validation", 424: "Backend", 429: "Overloaded",
             503: "Unhealthy", 504: "Backend"}


def _tei_error(err: GatewayError) -> Response:
    return _json(err.status, {"error": err.message,
                              "error_type": TEI_TYPES.get(err.status, "Backend")},
                 _headers(err))
