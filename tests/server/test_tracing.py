"""OpenTelemetry traces end to end: `make serve`'s launcher with an OTLP endpoint set exports,
to a receiver that decodes OpenTelemetry's protobuf messages, one trace per request holding
the gateway's span, its call to Triton, Triton's request, the fused_text ensemble and every
step that request ran, each step with its compute span, parents linked and times nested; a
client's own ``traceparent`` is continued over the gateway, HTTP and gRPC."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from ensemble.server import ROOT, free_ports
from export.registry import ENSEMBLE_MODEL
from perf.otlp import Receiver, Span

pytestmark = pytest.mark.server

GATEWAY = "fusedembed-gateway"
TRITON = "fusedembed-triton"
# Triton's clock and the gateway's are the same machine's, read by two processes.
SKEW_NS = 2_000_000


class Launched:
    def __init__(self, receiver: Receiver, proc: subprocess.Popen, ports: dict[str, int]):
        self.receiver, self.proc, self.ports = receiver, proc, ports

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"


@pytest.fixture(scope="module")
def traced(repository) -> Iterator[Launched]:
    with Receiver() as receiver:
        names = ("HTTP_PORT", "GRPC_PORT", "METRICS_PORT", "GATEWAY_PORT")
        ports = dict(zip(names, free_ports(len(names))))
        env = dict(os.environ) | {k: str(v) for k, v in ports.items()} | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # both exporters: send within 0.2 s
        }
        proc = subprocess.Popen([sys.executable, "-m", "ensemble.server", "--repository",
                                 str(repository)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        try:
            assert any(line.startswith("fusedembed is ready") for line in lines), "".join(lines)
            assert any(f"traces   {receiver.endpoint}/v1/traces" in line for line in lines)
            yield Launched(receiver, proc, ports)
        finally:
            proc.terminate()
            proc.communicate(timeout=120)
        assert receiver.rejected == []


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def needed_steps(config: dict, outputs: list[str]) -> set[str]:
    """The models of the ensemble's steps that the requested outputs need (Triton runs no
    other)."""
    steps = config["ensemble_scheduling"]["step"]
    needed = set(outputs)
    models: set[str] = set()
    for step in reversed(steps):
        if set(step.get("output_map", {}).values()) & needed:
            models.add(step["model_name"])
            needed |= set(step.get("input_map", {}).values())
    return models


def ensemble_config(launched: Launched) -> dict:
    url = f"http://127.0.0.1:{launched.ports['HTTP_PORT']}/v2/models/{ENSEMBLE_MODEL}/config"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def tree_of(spans: list[Span]) -> dict[str, list[Span]]:
    children: dict[str, list[Span]] = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)
    return children


# Where a server span's answer leaves it: the client may read the answer, and end its own span,
# before the server records that its send has ended.
SEND_STARTS = ("GRPC_SEND_START", "HTTP_SEND_START")


def assert_nested(child: Span, parent: Span) -> None:
    """``child`` lies within ``parent`` in time; across processes, within the two clocks' skew
    and up to the moment the child began sending its answer."""
    assert child.start_ns <= child.end_ns, child
    if child.service == parent.service:
        assert parent.start_ns <= child.start_ns and child.end_ns <= parent.end_ns, (
            child.name, parent.name, child.end_ns - parent.end_ns)
        return
    sent = min([t for e, t in child.events if e in SEND_STARTS] or [child.end_ns])
    assert parent.start_ns - SKEW_NS <= child.start_ns, (child, parent)
    assert sent <= parent.end_ns + SKEW_NS, (child.name, parent.name, sent - parent.end_ns)


def assert_whole_triton_request(spans: list[Span], request: Span, steps: set[str]) -> None:
    """``request`` (Triton's InferRequest) holds fused_text, which holds a span for every step,
    each holding its compute span with the compute events, every one nested in time."""
    children = tree_of(spans)
    ensemble = [s for s in children.get(request.span_id, []) if s.name == ENSEMBLE_MODEL]
    assert len(ensemble) == 1, [s.name for s in children.get(request.span_id, [])]
    assert_nested(ensemble[0], request)
    step_spans = {s.name: s for s in children.get(ensemble[0].span_id, [])}
    assert set(step_spans) == steps
    for name, step in step_spans.items():
        assert step.service == TRITON and step.attributes["triton.model_name"] == name
        assert_nested(step, ensemble[0])
        events = dict(step.events)
        assert {"REQUEST_START", "QUEUE_START", "REQUEST_END"} <= set(events), (name, events)
        compute = [s for s in children.get(step.span_id, []) if s.name == "compute"]
        assert len(compute) == 1, name
        assert_nested(compute[0], step)
        # The queue: from QUEUE_START to the compute span's start.
        assert events["QUEUE_START"] <= compute[0].start_ns
        assert [e for e, _ in compute[0].events] == [
            "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]


def gateway_post(launched: Launched, headers: dict[str, str]) -> tuple[dict, dict[str, str]]:
    body = json.dumps({"model": "fusedembed", "input": ["hello world"]}).encode()
    request = urllib.request.Request(f"{launched.gateway}/v1/embeddings", data=body,
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read()), dict(response.headers)


def test_a_gateway_request_is_one_trace_from_the_gateway_through_every_step(traced):
    answer, headers = gateway_post(traced, {})
    assert len(answer["data"][0]["embedding"]) == 1536
    trace_id = headers["x-request-id"]  # the request id is the trace id
    assert len(trace_id) == 32 and int(trace_id, 16)
    config = ensemble_config(traced)
    steps = needed_steps(config, ["FUSED", "TOKENS"])  # what the gateway asks for
    assert {"fusemoe", "e11_entity", "tok_bert_uncased"} <= steps

    def done(spans: list[Span]) -> bool:
        names = {s.name for s in spans}
        return steps | {ENSEMBLE_MODEL, "InferRequest"} <= names and any(
            s.service == GATEWAY and s.parent_id == "" for s in spans)

    spans = traced.receiver.wait(trace_id, done)
    assert done(spans), sorted({(s.service, s.name) for s in spans})
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_id not in by_id]
    assert len(roots) == 1 and roots[0].service == GATEWAY and roots[0].parent_id == ""
    assert roots[0].name.startswith("POST /v1/embeddings")
    for s in spans:  # every span's parent is in the trace, and it lies within its parent
        if s is not roots[0]:
            assert_nested(s, by_id[s.parent_id])
    requests = [s for s in spans if s.name == "InferRequest"]
    assert len(requests) == 1
    call = by_id[requests[0].parent_id]  # the gateway's gRPC call to Triton
    assert call.service == GATEWAY and call.name.endswith("/ModelInfer")
    assert_whole_triton_request(spans, requests[0], steps)
    assert {s.attributes.get("triton.request_id") for s in spans
            if s.service == TRITON and "triton.model_name" in s.attributes} == {trace_id}


def test_a_client_s_traceparent_is_continued_by_the_gateway(traced):
    trace_id, parent, header = traceparent()
    _, headers = gateway_post(traced, {"traceparent": header, "X-Request-Id": "order-7"})
    assert headers["x-request-id"] == "order-7"
    spans = traced.receiver.wait(trace_id, lambda s: {"InferRequest", ENSEMBLE_MODEL} <= {
        x.name for x in s} and any(x.parent_id == parent for x in s))
    server = [s for s in spans if s.parent_id == parent]
    assert len(server) == 1 and server[0].service == GATEWAY
    assert {s.attributes.get("triton.request_id") for s in spans
            if s.name == ENSEMBLE_MODEL} == {"order-7"}


def test_a_client_s_traceparent_is_continued_over_http_and_grpc(traced):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    steps = needed_steps(ensemble_config(traced), ["FUSED"])
    for module, port in ((httpclient, "HTTP_PORT"), (grpcclient, "GRPC_PORT")):
        trace_id, parent, header = traceparent()
        client = module.InferenceServerClient(f"127.0.0.1:{traced.ports[port]}")
        text = module.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"continued"]], dtype=object))
        stamp = module.InferInput("TIMESTAMP", [1, 1], "INT64")
        stamp.set_data_from_numpy(np.array([[1_700_000_000]], dtype=np.int64))
        result = client.infer(ENSEMBLE_MODEL, [text, stamp],
                              outputs=[module.InferRequestedOutput("FUSED")],
                              headers={"traceparent": header})
        assert result.as_numpy("FUSED").shape == (1, 1536)
        spans = traced.receiver.wait(trace_id, lambda s: steps | {"InferRequest"} <= {
            x.name for x in s})
        requests = [s for s in spans if s.name == "InferRequest"]
        assert len(requests) == 1 and requests[0].parent_id == parent, port
        assert_whole_triton_request(spans, requests[0], steps)
