"""OpenTelemetry traces: the settings both processes read, Triton's command-line flags, the
gateway's instrumentation and its request ids.

Off unless an OTLP endpoint is set, by OpenTelemetry's own variables:

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
  (the collector's base URL; ``/v1/traces`` is added): OTLP over HTTP;
- ``OTEL_TRACES_SAMPLER_ARG``: the share of requests traced, in (0, 1] (default 1);
- ``OTEL_SERVICE_NAME``: the service name (default ``fusedembed``); Triton's spans come
  from ``<name>-triton`` and the gateway's from ``<name>-gateway``;
- ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.

When off, nothing of OpenTelemetry is imported and Triton runs without a trace mode.
Triton (``--trace-config mode=opentelemetry``) samples 1 in round(1 / share) of the
requests it receives, by its own count: it neither reads the caller's sampled flag nor the
gateway's choice, so below a share of 1 a gateway trace may lack Triton's spans, and Triton
may trace a request whose gateway span was not kept. With a share of 1 every trace is whole.
"""

from __future__ import annotations

import contextvars
import os
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

TRACES_PATH = "/v1/traces"
# A client's X-Request-Id is kept when it is this short and printable; else a new one.
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


@dataclass(frozen=True)
class TraceSettings:
    endpoint: str = ""  # OTLP/HTTP traces URL; empty: tracing off
    share: float = 1.0
    service: str = "fusedembed"

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TraceSettings:
        env = dict(os.environ if env is None else env)
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        name, endpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if not endpoint:
            name, base = "OTEL_EXPORTER_OTLP_ENDPOINT", env.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
            endpoint = base.rstrip("/") + TRACES_PATH if base else ""
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name}: {endpoint!r} is not an http(s) URL of an OTLP "
                                 "collector (e.g. http://collector:4318)")
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1"
        try:
            share = float(raw)
        except ValueError as err:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: {raw!r} is not a number") from err
        if not 0 < share <= 1:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: {raw} is outside (0, 1], the share of "
                             "requests traced")
        service = env.get("OTEL_SERVICE_NAME", "").strip() or "fusedembed"
        return cls(endpoint, share, service)

    @property
    def triton_rate(self) -> int:
        """Triton's ``rate``: 1 traced request in this many."""
        return max(1, round(1 / self.share))

    def triton_args(self) -> list[str]:
        """tritonserver's flags: none when off."""
        if not self.enabled:
            return []
        return ["--trace-config", "mode=opentelemetry",
                "--trace-config", f"opentelemetry,url={self.endpoint}",
                "--trace-config", f"opentelemetry,resource=service.name={self.service}-triton",
                "--trace-config", f"rate={self.triton_rate}",
                "--trace-config", "count=-1",
                # Queue, compute start and end of every model: the step spans' events.
                "--trace-config", "level=TIMESTAMPS"]


def instrument(app, settings: TraceSettings):
    """The gateway's tracer provider (OTLP over HTTP, batched) with OpenTelemetry's Starlette
    instrumentation on ``app`` (a server span per request, continuing a client's
    ``traceparent``) and its gRPC asyncio client instrumentation (a client span per call to
    Triton, its context sent as ``traceparent`` metadata). Call before the gRPC channel is
    made. Returns the provider (shut down to flush)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({SERVICE_NAME: f"{settings.service}-gateway"})
    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(TraceIdRatioBased(settings.share)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorClient().instrument(tracer_provider=provider)
    StarletteInstrumentor.instrument_app(app, tracer_provider=provider)
    return provider


def trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" when none is recorded or
    OpenTelemetry is not in use."""
    import sys

    if "opentelemetry.trace" not in sys.modules:
        return ""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def request_id() -> str:
    """This request's id (``RequestIds``), "" outside a request."""
    return _request_id.get()


class RequestIds:
    """ASGI middleware: every request gets an id, its client's ``X-Request-Id`` when it sends
    a short printable one, else its trace id when traced, else a random one. It is answered in
    ``X-Request-Id``, sent to Triton as the inference request's id (Triton's spans carry it as
    ``triton.request_id``) and named in the gateway's log lines."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        given = given.decode("latin-1")
        rid = given if REQUEST_ID.match(given) else trace_id() or uuid.uuid4().hex
        token = _request_id.set(rid)
        header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)
