"""Tracing's own logic without a server: the settings read from OpenTelemetry's variables,
Triton's flags (none when off), request ids through the gateway to Triton and into its log
lines, and the OTLP receiver the server test and the benchmark read traces with, on a real
export of Triton 2.51 (JSON) and of the Python SDK (protobuf)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ensemble.server import Ports, TritonServer
from fusedembed_client.gateway.app import Gateway
from fusedembed_client.gateway.settings import Settings
from fusedembed_client.gateway.tracing import TraceSettings
from perf.otlp import Receiver, decode, spans_of
from tests.unit.test_gateway_backend import triton

DATA = Path(__file__).parent / "data"


def test_tracing_is_off_unless_an_endpoint_is_set():
    assert not TraceSettings.from_env({}).enabled
    assert TraceSettings.from_env({}).triton_args() == []
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert TraceSettings.from_env(on).endpoint == "http://collector:4318/v1/traces"
    assert not TraceSettings.from_env(on | {"OTEL_SDK_DISABLED": "true"}).enabled
    full = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example:4318/custom/path",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}
    assert TraceSettings.from_env(full).endpoint == "https://c.example:4318/custom/path"


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT: "),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://c:4317"}, "OTEL_EXPORTER_OTLP_TRACES_"),
    ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG: 'half' is not a number"),
    ({"OTEL_TRACES_SAMPLER_ARG": "0"}, r"OTEL_TRACES_SAMPLER_ARG: 0 is outside \(0, 1\]"),
    ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, r"is outside \(0, 1\]"),
])
def test_a_bad_setting_is_refused_by_its_name(env, message):
    with pytest.raises(ValueError, match=message):
        TraceSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"} | env)


@pytest.mark.parametrize(("share", "rate"), [("1", 1), ("0.5", 2), ("0.3", 3), ("0.01", 100)])
def test_triton_traces_one_request_in_round_one_over_the_share(share, rate):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER_ARG": share,
           "OTEL_SERVICE_NAME": "search"}
    args = TraceSettings.from_env(env).triton_args()
    flags = [args[i + 1] for i in range(0, len(args), 2)]
    assert all(args[i] == "--trace-config" for i in range(0, len(args), 2))
    assert flags == ["mode=opentelemetry", "opentelemetry,url=http://c:4318/v1/traces",
                     "opentelemetry,resource=service.name=search-triton", f"rate={rate}",
                     "count=-1", "level=TIMESTAMPS"]


def test_tritonserver_gets_the_flags_only_when_tracing_is_on():
    def command(tracing: TraceSettings) -> list[str]:
        server = TritonServer(Path("/repo"), Ports(1, 2, 3), admin_key=None, tracing=tracing,
                              triton_ports=Ports(4, 5, 3))
        return server.command(Path("/runtime"))

    off = command(TraceSettings())
    assert not any(a.startswith("--trace") for a in off)
    on = command(TraceSettings("http://c:4318/v1/traces"))
    assert on[:len(off)] == off and on[len(off):] == TraceSettings(
        "http://c:4318/v1/traces").triton_args()


async def asgi(app, headers: list[tuple[bytes, bytes]], body: bytes):
    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings",
             "raw_path": b"/v1/embeddings", "query_string": b"", "root_path": "",
             "http_version": "1.1", "scheme": "http", "server": ("gateway", 80),
             "client": ("client", 1), "headers": [(b"content-type", b"application/json"),
                                                  (b"content-length", str(len(body)).encode()),
                                                  *headers]}
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.mark.parametrize(("given", "kept"), [
    ("order-7", True), ("", False), ("has a space", False), ("x" * 129, False),
    ("é", False)])
def test_every_answer_has_a_request_id_and_triton_gets_the_same(loop, caplog, given, kept):
    backend = triton(batch=4)
    app = Gateway(Settings(access_log=True), backend).app()
    headers = [(b"x-request-id", given.encode())] if given else []
    with caplog.at_level(logging.INFO, logger="fusedembed.gateway"):
        status, answer = loop.run_until_complete(asgi(
            app, headers, b'{"model": "fusedembed", "input": ["one", "two"]}'))
    assert status == 200
    rid = answer["x-request-id"]
    if kept:
        assert rid == given
    else:  # no trace here: a random id of 32 hex digits
        assert rid != given and len(rid) == 32 and int(rid, 16) >= 0
    assert {c.kwargs["request_id"] for c in backend._client.calls} == {rid}
    line = next(r.getMessage() for r in caplog.records if r.name == "fusedembed.gateway")
    assert line.startswith(f"request_id={rid} trace_id=- route=/v1/embeddings "
                           "model=fusedembed status=200 ")


def test_only_failures_are_logged_without_the_access_log(loop, caplog):
    from tests.unit import fake_tritonclient as fake

    def broken(model, inputs, outputs):
        raise fake.InferenceServerException("stub died", "StatusCode.INTERNAL")

    with caplog.at_level(logging.INFO, logger="fusedembed.gateway"):
        ok = Gateway(Settings(), triton(batch=4)).app()
        assert loop.run_until_complete(asgi(ok, [], b'{"input": "a"}'))[0] == 200
        failing = Gateway(Settings(), triton(batch=4, handler=broken)).app()
        status, answer = loop.run_until_complete(asgi(failing, [], b'{"input": "a"}'))
    assert status >= 500
    lines = [r for r in caplog.records if r.name == "fusedembed.gateway"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert f"request_id={answer['x-request-id']} " in lines[0].getMessage()
    assert f"status={status} " in lines[0].getMessage()


def test_the_receiver_reads_triton_s_json_export():
    """Triton 2.51's own export (OTLP JSON, ids in hex) of a request with a traceparent and
    a request id to a two-step ensemble ``ab`` (models ``a`` then ``b``)."""
    body = (DATA / "triton-otlp-export.json").read_bytes()
    spans = {s.name: s for s in spans_of(decode(body, "application/json"))}
    request = spans["InferRequest"]
    assert request.trace_id == "2af7651916cd43dd8448eb211c80319c"
    assert request.parent_id == "c7ad6b7169203331" and request.service == "fusedembed-triton"
    assert spans["ab"].parent_id == request.span_id
    assert spans["a"].parent_id == spans["b"].parent_id == spans["ab"].span_id
    assert spans["a"].attributes["triton.request_id"] == "req-42"
    assert [e for e, _ in spans["a"].events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    computes = [s for s in spans_of(decode(body, "application/json")) if s.name == "compute"]
    assert {c.parent_id for c in computes} == {spans["a"].span_id, spans["b"].span_id}
    assert all(s.start_ns <= s.end_ns for s in spans.values())


def test_the_receiver_reads_the_python_sdk_s_protobuf_export():
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    with Receiver() as receiver:
        provider = TracerProvider(resource=Resource.create({"service.name": "t"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=receiver.endpoint + "/v1/traces")))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span(
                "inner", attributes={"n": 3}):
            pass
        provider.shutdown()
        trace_id = format(outer.get_span_context().trace_id, "032x")
        spans = {s.name: s for s in receiver.spans(trace_id)}
    assert receiver.rejected == [] and set(spans) == {"outer", "inner"}
    assert spans["inner"].parent_id == spans["outer"].span_id and spans["outer"].parent_id == ""
    assert spans["inner"].attributes == {"n": 3} and spans["inner"].service == "t"
