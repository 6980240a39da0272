"""An OTLP/HTTP trace receiver for the tests and the benchmark: it takes what a collector
would (POST /v1/traces), decodes each export into OpenTelemetry's own protobuf message
(``ExportTraceServiceRequest``), binary as the Python SDK sends it or OTLP JSON as Triton's
C++ exporter sends it, and keeps the spans."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ID_FIELDS = ("traceId", "spanId", "parentSpanId")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root
    start_ns: int
    end_ns: int
    attributes: dict[str, object] = field(default_factory=dict)
    events: tuple[tuple[str, int], ...] = ()  # (name, time in ns)


def _hex_ids_to_base64(node: object) -> object:
    """OTLP JSON writes trace and span ids in hex; protobuf's JSON mapping reads bytes as
    base64."""
    if isinstance(node, dict):
        return {k: (base64.b64encode(bytes.fromhex(v)).decode() if k in ID_FIELDS and
                    isinstance(v, str) else _hex_ids_to_base64(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def decode(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    if "json" in content_type:
        message = ExportTraceServiceRequest()
        json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), message,
                              ignore_unknown_fields=True)
        return message
    return ExportTraceServiceRequest.FromString(body)


def _value(v) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                out.append(Span(str(resource.get("service.name", "")), s.name, s.trace_id.hex(),
                                s.span_id.hex(), s.parent_span_id.hex(),
                                s.start_time_unix_nano, s.end_time_unix_nano,
                                {a.key: _value(a.value) for a in s.attributes},
                                tuple((e.name, e.time_unix_nano) for e in s.events)))
    return out


class Receiver:
    """``with Receiver() as r:`` listens on 127.0.0.1 (a free port); ``r.endpoint`` is the
    base URL to give as OTEL_EXPORTER_OTLP_ENDPOINT. ``keep=False`` counts the spans of each
    service without keeping them (a benchmark's millions)."""

    def __init__(self, keep: bool = True) -> None:
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self.keep = keep
        self.counts: dict[str, int] = {}
        self.exports = 0
        self.rejected: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = self.headers.get("Content-Type") or ""
                try:
                    spans = spans_of(decode(body, kind))
                except Exception as err:  # noqa: BLE001 - a bad export is answered 400
                    receiver.rejected.append(f"{kind}: {err}")
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    if receiver.keep:
                        receiver._spans.extend(spans)
                    for span in spans:
                        receiver.counts[span.service] = receiver.counts.get(span.service, 0) + 1
                    receiver.exports += 1
                answer = ExportTraceServiceResponse()
                payload = (json_format.MessageToJson(answer).encode() if "json" in kind
                           else answer.SerializeToString())
                self.send_response(200)
                self.send_header("Content-Type", "application/json" if "json" in kind
                                 else "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self, trace_id: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait(self, trace_id: str, done, timeout_s: float = 30.0) -> list[Span]:
        """The spans of ``trace_id`` once ``done(spans)`` holds (exporters send in batches),
        or what came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans(trace_id)
            if done(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)
