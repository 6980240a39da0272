"""Fuzzing every public port: thousands of generated bad requests, and what each got.

    python -m perf.fuzz [--requests 10000]          # make fuzz

Four ports, one after another, against one server started for the run:

- **HTTP JSON** and **HTTP binary** (the binary-tensor extension, with
  ``Inference-Header-Content-Length``) and **gRPC**: KServe v2 requests to every entry point
  (fused_text, fused_text_cached, fused_text_failsafe, fused_image), drawn by hypothesis from
  a valid request with one to three faults: wrong, negative and overflowing shapes,
  datatypes that disagree, missing, extra and duplicated inputs, BYTES that are not UTF-8,
  values out of range, element counts that disagree with the shape, bad request and output
  parameters, outputs that do not exist, unknown models and versions; on the wire, payloads
  cut short or padded, a header length past the body, JSON nested 100,000 deep, bodies of
  100 MB, serialized protobufs cut or flipped. One draw in eight is left valid.
- **the gateway**, through its own OpenAPI document with schemathesis: every operation,
  positive and negative cases, each answer also checked against the document. (No route
  creates a resource, so there is no stateful sequence to run.)

Every answer is classed: 2xx, 4xx (gRPC: INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE,
RESOURCE_EXHAUSTED, UNIMPLEMENTED), 5xx (gRPC: any other code), or none (the connection
closed). A **request fault answered 5xx** is any 5xx or none to a request this run made
malformed, and also to a valid one (no load runs beside it, so nothing is overloaded).
After every 100 requests a healthy request must return the exact vector it returned before
the run; the server must stay ready with no process restarted by the watchdog. Resident
memory (tritonserver, stubs, fronts; the gateway) before and after each port.

Writes perf/reports/fuzz.md and fuzz.json; exit status 1 on any 5xx, lost answer, changed
healthy vector, lost readiness or restart. ``tests/server/test_fuzz_ports.py`` runs the same
code, seeded and short, in the server test tier.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from export import registry as r
from perf import provenance
from perf.workload import REPORTS, RUN, T0, machine, rss_mib, server_memory

ENTRY_POINTS = (r.ENSEMBLE_MODEL, r.CACHED_MODEL, r.FAILSAFE_MODEL, "fused_image")
PROBE_EVERY = 100
HUGE_BYTES = 100 * 1024 * 1024
CLIENT_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED",
                "UNIMPLEMENTED"}
PROBE_TEXT = "the healthy probe sent after every hundred fuzzed requests"

DIMS = (st.integers(-(2 ** 63), 2 ** 63 - 1)
        | st.sampled_from([-1, 0, 1, 2, 3, 12, 32, 33, 2 ** 31, 2 ** 32 + 1, 2 ** 62, 2 ** 64]))
DATATYPES = ["BYTES", "INT64", "INT32", "INT8", "UINT64", "BOOL", "FP32", "FP64", "FP16",
             "BF16", "STRING", "", "int64"]
NAMES = [r.TEXT, r.TIMESTAMP, r.KIND, r.TRUNCATE, r.SESSION, "SEQUENCE", "TOP_K",
         "TEMPERATURE", "FOCUS", "PRESENCE", "DIMENSIONS", "ENCODING", "SPARSE_TOP_K", "IMAGE",
         "", "X", "text", "TEXT "]
OUTPUTS = ["FUSED", "E1", "E12", "E6_SPARSE_INDICES", "E12_TOKENS", "TOKENS", "MISSING",
           "NOPE", "", "FUSED_INT8"]
SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=10)
# Optional inputs with values out of their range (the pipeline's own checks answer these).
OUT_OF_RANGE = [("TOP_K", "INT32", [0]), ("TOP_K", "INT32", [99]),
                ("TEMPERATURE", "FP32", [-1.0]), ("TEMPERATURE", "FP32", ["NaN"]),
                ("FOCUS", "FP32", [-1.0] * 12), ("PRESENCE", "BOOL", [False] * 12),
                ("DIMENSIONS", "INT32", [7]), ("ENCODING", "BYTES", ["int3"]),
                ("SPARSE_TOP_K", "INT32", [-1]), ("KIND", "BYTES", ["document"]),
                ("SEQUENCE", "INT64", [-5]), ("SESSION", "BYTES", ["s" * 5000])]


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)).save(out, "PNG")
    return out.getvalue()


PNG = png()


# --- the requests ---------------------------------------------------------------------------

@dataclass
class Request:
    """A KServe v2 request before it is put on a wire; ``raw`` holds BYTES elements that are
    not text (sent as base64-free bytes on binary wires, as a lone surrogate in JSON)."""

    model: str
    version: str = ""
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] | None = None
    parameters: dict | None = None
    faults: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        version = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{version}/infer"


def valid(model: str, rows: int, text: str = "fuzz") -> Request:
    first = ({"name": "IMAGE", "datatype": "BYTES", "shape": [rows, 1], "data": [PNG] * rows}
             if model == "fused_image" else
             {"name": r.TEXT, "datatype": "BYTES", "shape": [rows, 1],
              "data": [f"{text} {i}" for i in range(rows)]})
    stamp = {"name": r.TIMESTAMP, "datatype": "INT64", "shape": [rows, 1], "data": [T0] * rows}
    return Request(model, inputs=[first, stamp], outputs=[{"name": "FUSED"}])


def items(tensor: dict) -> list:
    """A tensor's data as a list (an earlier fault may have made it anything)."""
    data = tensor.get("data")
    return list(data) if isinstance(data, list) else []


@st.composite
def requests(draw) -> Request:
    model = draw(st.sampled_from(ENTRY_POINTS))
    rows = draw(st.integers(1, 3))
    req = valid(model, rows)
    if draw(st.integers(0, 7)) == 0:
        return req
    for _ in range(draw(st.integers(1, 3))):
        fault = draw(st.sampled_from(
            ["shape", "shape", "datatype", "name", "missing", "duplicate", "extra", "data",
             "not utf-8", "count", "range", "parameters", "outputs", "model", "batch"]))
        req.faults.append(fault)
        tensors = req.inputs
        if fault in ("shape", "datatype", "name", "data", "count", "not utf-8") and not tensors:
            continue
        target = draw(st.sampled_from(tensors)) if tensors else None
        if fault == "shape":
            target["shape"] = draw(st.lists(DIMS, max_size=4))
        elif fault == "datatype":
            target["datatype"] = draw(st.sampled_from(DATATYPES))
        elif fault == "name":
            target["name"] = draw(st.sampled_from(NAMES))
        elif fault == "missing" and tensors:
            tensors.remove(target)
        elif fault == "duplicate" and tensors:
            tensors.append(dict(target))
        elif fault == "extra":
            tensors.append({"name": draw(st.sampled_from(NAMES)),
                            "datatype": draw(st.sampled_from(DATATYPES)),
                            "shape": draw(st.lists(st.integers(0, 4), max_size=3)),
                            "data": draw(st.lists(st.integers(-5, 5), max_size=6))})
        elif fault == "data":
            target["data"] = draw(st.lists(SCALARS, max_size=6) | JSON_VALUES)
        elif fault == "not utf-8":
            target["datatype"] = "BYTES"
            target["data"] = [draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"ok\xed\xa0\x80",
                                                    b"\x80" * 3]))
                              for _ in range(max(1, len(items(target))))]
        elif fault == "count":
            target["data"] = items(target) * draw(st.sampled_from([0, 2, 3]))
        elif fault == "range":
            name, datatype, data = draw(st.sampled_from(OUT_OF_RANGE))
            tensors.append({"name": name, "datatype": datatype,
                            "shape": [rows, len(data)], "data": data * rows})
        elif fault == "parameters":
            where = draw(st.sampled_from(["request", "request", "input", "output"]))
            params = draw(st.sampled_from([
                {"timeout": -1}, {"priority": -3}, {"priority": 2 ** 70}, {"timeout": None},
                {"sequence_id": "x"}, {"binary_data_output": "yes"},
                {"shared_memory_region": "nowhere", "shared_memory_byte_size": 64},
                {"classification": 3}, {"headers": {"a": [1]}}])
                | st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))
            if where == "request":
                req.parameters = params
            elif where == "input" and target is not None:
                target["parameters"] = params
            else:
                req.outputs = [{"name": "FUSED", "parameters": params}]
        elif fault == "outputs":
            req.outputs = [{"name": n} for n in draw(st.lists(st.sampled_from(OUTPUTS),
                                                              max_size=3))]
        elif fault == "model":
            change = draw(st.sampled_from(["model", "version", "version", "both"]))
            if change in ("model", "both"):
                req.model = draw(st.sampled_from(["nope", "e01_semantic", "FUSED_TEXT",
                                                  "tok_bert_uncased", "fused_text_"]))
            if change in ("version", "both"):
                req.version = draw(st.sampled_from(["99", "0", "-1", "abc", "1"]))
        elif fault == "batch":
            n = draw(st.sampled_from([0, 33, 64]))
            for t in tensors:
                t["shape"] = [n, *t.get("shape", [1, 1])[1:]] if isinstance(t.get("shape"),
                                                                            list) else [n]
                t["data"] = (items(t) * 64)[:n]
    return req


# --- the wires ------------------------------------------------------------------------------

NUMPY = {"INT64": "<i8", "INT32": "<i4", "INT8": "i1", "UINT64": "<u8", "FP32": "<f4",
         "FP64": "<f8", "FP16": "<f2", "BOOL": "?"}


def raw_bytes(tensor: dict) -> bytes:
    """A tensor's data as the binary extension and gRPC's raw contents carry it; data that
    does not fit its datatype goes as its JSON text, which is wrong, as it should be."""
    data, datatype = tensor.get("data"), tensor.get("datatype")
    if not isinstance(data, list):
        return json.dumps(data, default=repr).encode()
    try:
        if datatype == "BYTES":
            items = [d if isinstance(d, bytes) else str(d).encode() for d in data]
            return b"".join(len(i).to_bytes(4, "little") + i for i in items)
        if datatype in NUMPY:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an integer out of the type's range
                return np.array(data, dtype=NUMPY[datatype]).tobytes()
    except (TypeError, ValueError, OverflowError, DeprecationWarning, RuntimeWarning):
        pass
    return json.dumps(data, default=repr).encode()


def json_ready(value):
    """JSON cannot carry non-UTF-8 bytes: they become lone surrogates, which are invalid."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "\ud800" + value.decode("latin-1")
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def dumps(value) -> bytes:
    return json.dumps(json_ready(value), default=repr).encode("utf-8", "surrogatepass")


def header(req: Request, binary: bool) -> dict:
    inputs = []
    for t in req.inputs:
        t = dict(t)
        if binary:
            t["parameters"] = {**t.get("parameters", {}), "binary_data_size": len(raw_bytes(t))}
            t.pop("data", None)
        inputs.append(t)
    out: dict = {"inputs": inputs}
    if req.outputs is not None:
        out["outputs"] = req.outputs
    if req.parameters is not None:
        out["parameters"] = req.parameters
    return out


@st.composite
def http_json(draw) -> tuple[str, bytes, dict, Request]:
    req = draw(requests())
    body = dumps(header(req, binary=False))
    # 100 MB bodies one draw in 500: each takes seconds to build, send and refuse.
    pick = draw(st.integers(0, 499))
    wire = ("huge" if pick == 0 else "nested" if pick < 6 else "cut" if pick < 40
            else "garbage" if pick < 70 else "plain")
    if wire == "cut":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif wire == "garbage":
        body += draw(st.binary(min_size=1, max_size=16))
    elif wire == "nested":
        body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    elif wire == "huge":
        body = b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["' \
            + b"x" * HUGE_BYTES + b'"]}]}'
    if wire != "plain":
        req.faults.append(f"wire: {wire}")
    return req.path, body, {"Content-Type": "application/json"}, req


@st.composite
def http_binary(draw) -> tuple[str, bytes, dict, Request]:
    req = draw(requests())
    head = dumps(header(req, binary=True))
    payload = b"".join(raw_bytes(t) for t in req.inputs)
    declared = len(head)
    wire = draw(st.sampled_from(["plain"] * 10 + ["cut", "padded", "past the body",
                                                  "inside the header", "negative", "bad prefix"]))
    if wire == "cut":
        payload = payload[: draw(st.integers(0, max(0, len(payload) - 1)))]
    elif wire == "padded":
        payload += draw(st.binary(min_size=1, max_size=32))
    elif wire == "past the body":
        declared = len(head) + len(payload) + draw(st.integers(1, 2 ** 40))
    elif wire == "inside the header":
        declared = draw(st.integers(0, max(0, len(head) - 1)))
    elif wire == "negative":
        declared = -draw(st.integers(1, 100))
    elif wire == "bad prefix":  # a BYTES element that claims more than there is
        payload = (2 ** 32 - 1).to_bytes(4, "little") + payload[4:]
    if wire != "plain":
        req.faults.append(f"wire: {wire}")
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(declared)}
    return req.path, head + payload, headers, req


@st.composite
def grpc_messages(draw) -> tuple[bytes, Request]:
    from tritonclient.grpc import service_pb2

    req = draw(requests())
    msg = service_pb2.ModelInferRequest(model_name=req.model, model_version=req.version)
    for t in req.inputs:
        tensor = msg.inputs.add(name=str(t.get("name")), datatype=str(t.get("datatype")))
        shape = t.get("shape")
        if isinstance(shape, list):
            tensor.shape.extend(int(d) % 2 ** 64 - (2 ** 64 if int(d) % 2 ** 64 >= 2 ** 63
                                                    else 0)
                                for d in shape if isinstance(d, int))
        msg.raw_input_contents.append(raw_bytes(t))
    for o in req.outputs or []:
        if isinstance(o, dict) and isinstance(o.get("name"), str):
            msg.outputs.add(name=o["name"])
    if isinstance(req.parameters, dict):
        for key, value in req.parameters.items():
            p = msg.parameters[str(key)]
            if isinstance(value, bool):
                p.bool_param = value
            elif isinstance(value, int) and -(2 ** 63) <= value < 2 ** 63:
                p.int64_param = value
            else:
                p.string_param = str(value)
    raw = msg.SerializeToString()
    wire = draw(st.sampled_from(["plain"] * 10 + ["cut", "flipped", "typed and raw"]))
    if wire == "cut":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif wire == "flipped" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
    elif wire == "typed and raw" and msg.inputs:
        msg.inputs[0].contents.int64_contents.extend([1, 2])
        raw = msg.SerializeToString()
    if wire != "plain":
        req.faults.append(f"wire: {wire}")
    return raw, req


# --- the run --------------------------------------------------------------------------------

@dataclass
class Tally:
    port: str
    sent: int = 0
    classes: Counter = field(default_factory=Counter)
    server_faults: list[str] = field(default_factory=list)  # 5xx or no answer, with the case
    probes: int = 0
    probes_changed: int = 0
    not_ready: int = 0
    contract: list[str] = field(default_factory=list)  # gateway answers off its document
    memory_before_mib: float = 0.0
    memory_after_mib: float = 0.0
    seconds: float = 0.0
    restarts: list[str] = field(default_factory=list)

    def record(self, cls: str, detail: str) -> None:
        self.sent += 1
        self.classes[cls] += 1
        if cls in ("5xx", "none") and len(self.server_faults) < 200:
            self.server_faults.append(detail[:300])

    @property
    def failed(self) -> bool:
        return bool(self.classes["5xx"] or self.classes["none"] or self.probes_changed
                    or self.not_ready or self.restarts or self.contract)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class HttpPort:
    """One keep-alive connection to the HTTP port, opened again after the server closes it."""

    def __init__(self, url: str) -> None:
        self.host, port = url.rsplit(":", 1)
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, bytes] | None:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=180)
            try:
                self.conn.request("POST", path, body, headers)
                answer = self.conn.getresponse()
                data = answer.read()
                if answer.getheader("connection", "").lower() == "close":
                    self.close()
                return answer.status, data
            except (ConnectionError, http.client.HTTPException, TimeoutError, OSError):
                self.close()
                # A server that closes a kept-alive connection before reading the next
                # request: sent again once on a new one; twice is no answer.
                if attempt == 1:
                    return None
        return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def fuzz(tally: Tally, strategy, send: Callable, probe: Callable[[], bool], ready, n: int,
         seed: int) -> None:
    """Send draws of ``strategy`` until ``tally`` has ``n`` (fresh seeds from ``seed`` when
    one runs out of distinct draws); every PROBE_EVERY, ``probe()`` (the healthy vector
    unchanged) and ``ready()``."""
    target = tally.sent + n
    for round_ in range(50):
        before = tally.sent

        @hypothesis_seed(seed * 1000 + round_)
        @settings(max_examples=target - tally.sent, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def one(case) -> None:
            send(case)
            if tally.sent % PROBE_EVERY == 0:
                tally.probes += 1
                tally.probes_changed += not probe()
                tally.not_ready += not ready()

        try:
            one()
        except Unsatisfiable:  # nothing to make invalid (a GET without parameters)
            return
        if tally.sent >= target or tally.sent == before:
            return


def kserve_port(server, kind: str, n: int, seed: int) -> Tally:
    import grpc
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from fusedembed_client import FusedEmbedClient

    tally = Tally(kind)
    protocol = "grpc" if kind == "gRPC" else "http"
    url = server.grpc_url if protocol == "grpc" else server.http_url
    probe_client = FusedEmbedClient(url, protocol)
    healthy = probe_client.embed(PROBE_TEXT, T0).vector

    def probe() -> bool:
        try:
            return bool(np.array_equal(probe_client.embed(PROBE_TEXT, T0).vector, healthy))
        except Exception:  # noqa: BLE001 - a probe that fails is a changed answer
            return False

    checker = (grpcclient.InferenceServerClient(url) if protocol == "grpc"
               else httpclient.InferenceServerClient(url))

    def ready() -> bool:
        try:
            return bool(checker.is_server_ready())
        except Exception:  # noqa: BLE001
            return False

    if protocol == "grpc":
        channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1)])
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        def send(case) -> None:
            raw, req = case
            detail = f"{req.model} {req.faults}"
            try:
                call(raw, timeout=180)
                tally.record("2xx", detail)
            except grpc.RpcError as err:
                code = err.code().name
                cls = "4xx" if code in CLIENT_CODES else "5xx"
                tally.record(cls, f"{code} {err.details()} <- {detail}")
        strategy = grpc_messages()
    else:
        port = HttpPort(server.http_url)

        def send(case) -> None:
            path, body, headers, req = case
            answer = port.post(path, body, headers)
            detail = f"{req.model} {req.faults}"
            if answer is None:
                tally.record("none", f"no answer <- {detail}")
                return
            status, data = answer
            tally.record(status_class(status), f"{status} {data[:160]!r} <- {detail}")
        strategy = http_json() if kind == "HTTP JSON" else http_binary()

    def memory() -> float:
        return float(sum(server_memory(server).values()))

    tally.memory_before_mib = memory()
    restarts = len(server.watchdog.restarts) if server.watchdog else 0
    start = time.monotonic()
    fuzz(tally, strategy, send, probe, ready, n, seed)
    tally.seconds = time.monotonic() - start
    tally.memory_after_mib = memory()
    tally.restarts = list(server.watchdog.restarts[restarts:]) if server.watchdog else []
    probe_client.close()
    return tally


def gateway_port(gateway, server, n: int, seed: int, key: str = "") -> Tally:
    """schemathesis over the gateway's /openapi.json: every operation, positive and
    negative, the answers checked against the document."""
    import urllib.request

    import schemathesis
    from schemathesis import GenerationMode

    tally = Tally("gateway")
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(f"{gateway.url}/openapi.json",
                                                       headers=auth), timeout=30) as answer:
        schema = schemathesis.openapi.from_dict(json.loads(answer.read()))
    schema.config.update(base_url=gateway.url)
    operations = [result.ok() for result in schema.get_all_operations()]
    plan = [(op, mode) for op in operations for mode in GenerationMode]
    probe_body = {"input": [PROBE_TEXT], "timestamp": T0}

    def probe_vector() -> np.ndarray | None:
        req = urllib.request.Request(f"{gateway.url}/v1/embeddings",
                                     data=json.dumps(probe_body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **auth})
        try:
            with urllib.request.urlopen(req, timeout=120) as answer:
                return np.array(json.loads(answer.read())["data"][0]["embedding"])
        except Exception:  # noqa: BLE001
            return None

    healthy = probe_vector()

    def probe() -> bool:
        got = probe_vector()
        return healthy is not None and got is not None and bool(np.array_equal(got, healthy))

    def ready() -> bool:
        return server.ready()

    def memory() -> float:
        return float(sum(server_memory(server).values())) + rss_mib(gateway.process.pid)

    tally.memory_before_mib = memory()
    restarts = len(server.watchdog.restarts) if server.watchdog else 0
    start = time.monotonic()
    def send_to(op, mode):
        def send(case) -> None:
            try:
                response = case.call(headers=auth, timeout=180)
            except Exception as err:  # noqa: BLE001 - no answer at all
                tally.record("none", f"{op.label}: {type(err).__name__} {err}")
                return
            detail = f"{op.label} {mode.value}: {response.status_code} {response.text[:160]}"
            tally.record(status_class(response.status_code), detail)
            if response.status_code < 500:
                try:
                    op.validate_response(response)
                except Exception as err:  # noqa: BLE001 - an answer off the document
                    if len(tally.contract) < 50:
                        tally.contract.append(f"{detail} :: {str(err)[:200]}")
        return send

    # Rounds over every operation and mode, each with a fresh seed, until n are sent: the
    # operations without a body run out of distinct requests at once, the others fill n.
    for round_ in range(20):
        before = tally.sent
        per = max(1, (n - tally.sent) // len(plan))
        for op, mode in plan:
            fuzz(tally, op.as_strategy(generation_mode=mode), send_to(op, mode), probe, ready,
                 per, seed * 100 + round_)
        if tally.sent >= n or tally.sent == before:
            break
    tally.seconds = time.monotonic() - start
    tally.memory_after_mib = memory()
    tally.restarts = list(server.watchdog.restarts[restarts:]) if server.watchdog else []
    if gateway.process is None or gateway.process.poll() is not None:
        tally.restarts.append("gateway exited")
    return tally


PORTS = ("HTTP JSON", "HTTP binary", "gRPC", "gateway")


def run(n: int, seed: int, ports: tuple[str, ...] = PORTS) -> list[Tally]:
    from ensemble.server import REPOSITORY, Gateway, Ports, TritonServer, free_ports

    work = RUN / "fuzz"
    work.mkdir(parents=True, exist_ok=True)
    numbers = free_ports(4)
    server = TritonServer(REPOSITORY, Ports(*numbers[:3]), work / "triton.log")
    print("starting tritonserver ...", flush=True)
    server.start(timeout=900)
    gateway = Gateway(server.grpc_url, numbers[3], "127.0.0.1", work / "gateway.log")
    gateway.start()
    tallies = []
    try:
        for kind in ports:
            print(f"{kind}: {n} requests ...", flush=True)
            tally = (gateway_port(gateway, server, n, seed) if kind == "gateway"
                     else kserve_port(server, kind, n, seed))
            print(f"  {dict(tally.classes)} in {tally.seconds:.0f} s", flush=True)
            tallies.append(tally)
    finally:
        gateway.stop()
        server.stop()
    return tallies


def table(tallies: list[Tally]) -> str:
    rows = [("| port | requests | 2xx | 4xx | 5xx | no answer | healthy probes (changed) "
             "| not ready | restarts | off the document | RSS before → after (MiB) | s |"),
            "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---|---:|"]
    for t in tallies:
        rows.append(
            f"| {t.port} | {t.sent:,} | {t.classes['2xx']:,} | {t.classes['4xx']:,} "
            f"| {t.classes['5xx']} | {t.classes['none']} | {t.probes} ({t.probes_changed}) "
            f"| {t.not_ready} | {', '.join(t.restarts) or 0} | {len(t.contract)} "
            f"| {t.memory_before_mib:,.0f} → {t.memory_after_mib:,.0f} | {t.seconds:.0f} |")
    return "\n".join(rows)


def write(tallies: list[Tally], n: int, seed: int) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    data = [{"port": t.port, "sent": t.sent, "classes": dict(t.classes),
             "server_faults": t.server_faults, "probes": t.probes,
             "probes_changed": t.probes_changed, "not_ready": t.not_ready,
             "restarts": t.restarts, "off_the_document": t.contract,
             "memory_before_mib": t.memory_before_mib, "memory_after_mib": t.memory_after_mib,
             "seconds": t.seconds} for t in tallies]
    (REPORTS / "fuzz.json").write_text(json.dumps({"requests_per_port": n, "seed": seed,
                                                   "ports": data}, indent=1) + "\n")
    faults = [f"- {t.port}: {f}" for t in tallies for f in t.server_faults[:20]]
    contract = [f"- {c}" for t in tallies for c in t.contract[:20]]
    text = f"""# Fuzzing every port

`python -m perf.fuzz --requests {n} --seed {seed}` (`make fuzz`), {time.strftime('%Y-%m-%d')},
{machine()}. The request generators and the classes are described in
[perf/fuzz.py](../fuzz.py); the raw counts and every server fault are in
[fuzz.json](fuzz.json).

{table(tallies)}

A request fault answered 5xx, a request with no answer, a healthy probe whose vector changed,
a check that found the server not ready, or a process restarted by the watchdog fails the
run (goal 0 of each). "Off the document": gateway answers (below 500) that schemathesis
found not to match the gateway's own OpenAPI document.

## 5xx and unanswered requests

{chr(10).join(faults) or "None."}

## Gateway answers off its document

{chr(10).join(contract) or "None."}
"""
    path = REPORTS / "fuzz.md"
    provenance.write(path, text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="per port (10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ports", default=",".join(PORTS),
                        help=f"a comma-separated subset of {', '.join(PORTS)}")
    args = parser.parse_args(argv)
    tallies = run(args.requests, args.seed, tuple(p.strip() for p in args.ports.split(",")))
    print(table(tallies))
    print(f"wrote {write(tallies, args.requests, args.seed)}")
    return 1 if any(t.failed for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
