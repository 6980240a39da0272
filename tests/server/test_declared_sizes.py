"""Declared sizes that disagree with the data, the config or the limits, on every input of
every loaded model, over HTTP (JSON and binary tensors) and gRPC: each one a 400 /
INVALID_ARGUMENT naming the input; the server stays ready, no stub restarts, and a valid
request afterwards gets the vector it got before.

The first of them is the request that took Triton 2.51 down: a JSON input declaring 2^40 rows
while carrying three values.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from ensemble.server import stub_processes
from export import registry as r
from fusedembed_client import FusedEmbedClient

pytestmark = pytest.mark.server

PROBE = "the probe sentence answered before and after the declared sizes"
T0 = 1_700_000_000
# Relatives of the request, each as (declared shape, rows of data actually sent):
# huge, negative, overflowing int64 when multiplied, and a plain mismatch.
BAD_SHAPES = {
    "huge": lambda dims: ([2**40, *dims], 3),
    "negative": lambda dims: ([-1, *dims], 1),
    "overflowing": lambda dims: ([2**33, *[2**33] * len(dims)], 1),
    "mismatched": lambda dims: ([2, *dims], 1),
}
JSON_VALUE = {"BYTES": "x", "BOOL": False, "FP32": 0.0, "FP64": 0.0}
NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
         "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


def configs(server) -> list[dict]:
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    connection.request("POST", "/v2/repository/index", b"{}",
                       {"fusedembed-admin-key": server.admin_key or ""})
    index = json.loads(connection.getresponse().read())
    out = []
    for entry in index:
        connection.request("GET", f"/v2/models/{entry['name']}/config")
        out.append(json.loads(connection.getresponse().read()))
    return out


def datatype(entry: dict) -> str:
    kind = entry["data_type"].removeprefix("TYPE_")
    return "BYTES" if kind == "STRING" else kind


def tensor(entry: dict, shape: list[int], rows: int) -> tuple[dict, bytes]:
    """JSON tensor and its binary form: ``rows`` rows of data whatever ``shape`` declares."""
    dims = [max(int(d), 1) for d in entry.get("dims", [])]
    count = rows * int(np.prod(dims))
    kind = datatype(entry)
    if kind == "BYTES":
        blob = (len(b"x").to_bytes(4, "little") + b"x") * count
    else:
        blob = np.zeros(count, dtype=NUMPY[kind]).tobytes()
    return ({"name": entry["name"], "datatype": kind, "shape": shape,
             "data": [JSON_VALUE.get(kind, 0)] * count}, blob)


def cases(server):
    """(model, input, case, JSON body, binary body, header length, gRPC request)."""
    for config in configs(server):
        batched = int(config.get("max_batch_size", 0)) > 0
        for target in config.get("input", []):
            for case, make in BAD_SHAPES.items():
                dims = [max(int(d), 1) for d in target.get("dims", [])]
                shape, rows = make(dims)
                if not batched:
                    shape, rows = shape[1:] or [2**40], 1
                tensors, blobs = [], []
                for entry in config["input"]:
                    if entry is target:
                        t, blob = tensor(entry, shape, rows)
                    else:
                        own = [max(int(d), 1) for d in entry.get("dims", [])]
                        t, blob = tensor(entry, ([1] if batched else []) + own, 1)
                    tensors.append(t)
                    blobs.append(blob)
                body = json.dumps({"inputs": tensors}).encode()
                header = json.dumps({"inputs": [
                    {k: v for k, v in t.items() if k != "data"}
                    | {"parameters": {"binary_data_size": len(b)}}
                    for t, b in zip(tensors, blobs, strict=True)]}).encode()
                request = service_pb2.ModelInferRequest(model_name=config["name"])
                for t, blob in zip(tensors, blobs, strict=True):
                    request.inputs.add(name=t["name"], datatype=t["datatype"],
                                       shape=[max(min(d, 2**63 - 1), -(2**63))
                                              for d in t["shape"]])
                    request.raw_input_contents.append(blob)
                yield (config["name"], target["name"], case, body, header + b"".join(blobs),
                       len(header), request.SerializeToString())


def post(url: str, path: str, body: bytes, headers: dict) -> tuple[int, str]:
    connection = http.client.HTTPConnection(url, timeout=60)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def test_declared_sizes_get_a_400_and_nothing_breaks(server):
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        before = client.embed(PROBE, T0).vector
    stubs = stub_processes(server.pid, every_instance=True)
    restarts = list(server.watchdog.restarts)
    channel = grpc.insecure_channel(server.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    sent = 0
    for model, name, case, body, binary, header, request in cases(server):
        path = f"/v2/models/{model}/infer"
        where = f"{model} {name} {case}"
        status, text = post(server.http_url, path, body, {})
        assert status == 400 and name in text, f"JSON {where}: {status} {text}"
        status, text = post(server.http_url, path, binary,
                            {"Inference-Header-Content-Length": str(header)})
        assert status == 400 and name in text, f"binary {where}: {status} {text}"
        with pytest.raises(grpc.RpcError) as caught:
            infer(request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, \
            f"gRPC {where}: {caught.value.code()} {caught.value.details()}"
        assert name in caught.value.details()
        sent += 3
    channel.close()
    models = {config["name"] for config in configs(server)}
    assert {r.ENSEMBLE_MODEL, r.CACHED_MODEL, r.FAILSAFE_MODEL, r.IMAGE_MODEL} <= models
    assert sent >= 3 * 4 * len(models)
    assert server.process.poll() is None and server.ready()
    assert stub_processes(server.pid, every_instance=True) == stubs
    assert server.watchdog.restarts == restarts
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        after = client.embed(PROBE, T0).vector
    np.testing.assert_allclose(after, before, atol=1e-6)


@pytest.mark.parametrize("value", ["abc", "-1", "0", str(2**64), " 12x"])
def test_a_bad_header_length_is_a_400_naming_the_header(server, value):
    body = json.dumps({"inputs": [
        {"name": r.TEXT, "datatype": "BYTES", "shape": [1, 1], "data": ["x"]},
        {"name": r.TIMESTAMP, "datatype": "INT64", "shape": [1, 1], "data": [T0]}]}).encode()
    status, text = post(server.http_url, f"/v2/models/{r.ENSEMBLE_MODEL}/infer", body,
                        {"Inference-Header-Content-Length": value})
    assert status == 400 and "Inference-Header-Content-Length" in text
    assert server.ready()


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"null", b'{"inputs": {}}', b'{"inputs": [1]}', b"\xff\xfe",
    b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["\\ud800"]}]}',
])
def test_structurally_broken_bodies_are_400(server, body):
    status, text = post(server.http_url, f"/v2/models/{r.ENSEMBLE_MODEL}/infer", body, {})
    assert status == 400, text
    assert server.ready()


@pytest.mark.parametrize("model", [r.ENSEMBLE_MODEL, r.CACHED_MODEL, r.FAILSAFE_MODEL])
def test_a_version_not_loaded_is_404_not_found_and_the_loaded_one_answers(server, model):
    body = json.dumps({"inputs": [
        {"name": r.TEXT, "datatype": "BYTES", "shape": [1, 1], "data": ["x"]},
        {"name": r.TIMESTAMP, "datatype": "INT64", "shape": [1, 1], "data": [T0]}],
        "outputs": [{"name": r.FUSED}]}).encode()
    for version, code in (("99", 404), ("0", 404), ("x", 400), ("1", 200)):
        status, text = post(server.http_url, f"/v2/models/{model}/versions/{version}/infer",
                            body, {})
        assert status == code, (version, text)
        if code == 404:
            assert f"version {version}: not loaded (loaded: 1)" in text
    message = service_pb2.ModelInferRequest(model_name=model, model_version="99")
    for name, datatype, value in ((r.TEXT, "BYTES", b"x"), (r.TIMESTAMP, "INT64", T0)):
        tensor = message.inputs.add(name=name, datatype=datatype, shape=[1, 1])
        (tensor.contents.bytes_contents if datatype == "BYTES"
         else tensor.contents.int64_contents).append(value)
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            infer(message.SerializeToString(), timeout=60)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        assert "version 99: not loaded" in caught.value.details()
    assert server.ready()


# ---- a storm of structurally malformed bodies ---------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
DIMS = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, 2, 3, 32, 33, 2**31, 2**40])
NAMES = st.sampled_from([r.TEXT, r.TIMESTAMP, r.KIND, r.TRUNCATE, r.SESSION, r.FOCUS, "", "X"])
DATATYPES = st.sampled_from(["BYTES", "INT64", "INT32", "BOOL", "FP32", "FP16", "BF16",
                             "UINT8", "STRING", "", "int64"])


@st.composite
def wire_requests(draw):
    """(protocol, body or gRPC message, headers): a fused_text request with a few of its
    fields replaced by anything at all."""
    rows = draw(st.integers(1, 3))
    tensors = [{"name": r.TEXT, "datatype": "BYTES", "shape": [rows, 1],
                "data": [f"text {i}" for i in range(rows)]},
               {"name": r.TIMESTAMP, "datatype": "INT64", "shape": [rows, 1],
                "data": [T0] * rows}]
    request: dict = {"inputs": tensors}
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(tensors))
        field = draw(st.sampled_from(["shape", "shape", "datatype", "name", "data", "inputs",
                                      "parameters", "outputs", "extra"]))
        if field == "shape":
            target["shape"] = draw(st.lists(DIMS, max_size=3) | JSON_VALUES)
        elif field == "datatype":
            target["datatype"] = draw(DATATYPES | JSON_VALUES)
        elif field == "name":
            target["name"] = draw(NAMES | JSON_VALUES)
        elif field == "data":
            target["data"] = draw(JSON_VALUES | st.lists(JSON_SCALARS, max_size=5))
        elif field == "inputs":
            request["inputs"] = draw(JSON_VALUES)
        elif field == "parameters":
            target["parameters"] = draw(JSON_VALUES)
        elif field == "outputs":
            request["outputs"] = draw(JSON_VALUES)
        else:
            tensors.append({"name": draw(NAMES), "datatype": draw(DATATYPES),
                            "shape": draw(st.lists(DIMS, max_size=3)),
                            "data": draw(st.lists(JSON_SCALARS, max_size=4))})
    protocol = draw(st.sampled_from(["json", "json", "raw"]))
    body = json.dumps(request).encode()
    headers: dict = {}
    if protocol == "raw":  # bytes that are not what their headers say
        body = draw(st.sampled_from([body[: len(body) // 2], body + b"\xff\xfe",
                                     b"\xff" + body, body.replace(b'"', b"'", 1)]))
        if draw(st.booleans()):
            headers["Inference-Header-Content-Length"] = str(
                draw(st.integers(-5, len(body) + 5)))
    return body, headers


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(case=wire_requests())
def test_a_storm_of_malformed_bodies_gets_no_5xx(server, case):
    body, headers = case
    status, text = post(server.http_url, f"/v2/models/{r.ENSEMBLE_MODEL}/infer", body, headers)
    assert status == 200 or 400 <= status < 500, f"{status} {text[:300]} for {body[:300]!r}"
    if status != 200:
        assert json.loads(text)["error"]


@st.composite
def grpc_requests(draw) -> bytes:
    """A fused_text ModelInferRequest with shapes, datatypes, names and contents replaced,
    or its serialized bytes cut or flipped."""
    rows = draw(st.integers(1, 3))
    request = service_pb2.ModelInferRequest(model_name=r.ENSEMBLE_MODEL)
    for name, datatype in ((r.TEXT, "BYTES"), (r.TIMESTAMP, "INT64")):
        request.inputs.add(name=name, datatype=datatype, shape=[rows, 1])
    request.raw_input_contents.append(b"".join(len(b"t").to_bytes(4, "little") + b"t"
                                               for _ in range(rows)))
    request.raw_input_contents.append(np.full(rows, T0, dtype=np.int64).tobytes())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(request.inputs) - 1))
        tensor = request.inputs[i]
        field = draw(st.sampled_from(["shape", "shape", "datatype", "name", "raw", "typed",
                                      "extra"]))
        if field == "shape":
            del tensor.shape[:]
            tensor.shape.extend(draw(st.lists(DIMS, max_size=3)))
        elif field == "datatype":
            tensor.datatype = draw(DATATYPES)
        elif field == "name":
            tensor.name = draw(NAMES)
        elif field == "raw" and i < len(request.raw_input_contents):
            request.raw_input_contents[i] = draw(st.binary(max_size=40))
        elif field == "typed":
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-5, 5),
                                                                max_size=3)))
        else:
            request.inputs.add(name=draw(NAMES), datatype=draw(DATATYPES),
                               shape=draw(st.lists(DIMS, max_size=3)))
            if draw(st.booleans()):
                request.raw_input_contents.append(draw(st.binary(max_size=16)))
    raw = request.SerializeToString()
    if draw(st.integers(0, 4)) == 0:
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8))
    return raw


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(raw=grpc_requests())
def test_a_storm_of_malformed_grpc_requests_gets_no_server_fault(server, raw):
    channel = grpc.insecure_channel(server.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        infer(raw, timeout=120)
    except grpc.RpcError as err:
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), \
            f"{err.code()} {err.details()}"
        assert err.details()
    finally:
        channel.close()


def test_the_server_is_whole_after_the_storm(server):
    """Runs after the storm (file order): still ready, no stub restarted since start."""
    assert server.process.poll() is None and server.ready()
    assert not [m for m in server.watchdog.restarts if not m.startswith("front:")]


def test_tokens_sent_to_an_embedder_directly_are_checked_per_request(server):
    """An id past the vocabulary is a 400 for its own request only: a valid request to the
    same model at the same time is answered (they may be batched together)."""
    def tokens(ids: list[int]) -> bytes:
        return json.dumps({"inputs": [
            {"name": r.INPUT_IDS, "datatype": "INT64", "shape": [1, len(ids)], "data": ids},
            {"name": r.ATTENTION_MASK, "datatype": "INT64", "shape": [1, len(ids)],
             "data": [1] * len(ids)}]}).encode()

    bad, good = tokens([101, 10**9, 102]), tokens([101, 7592, 102])
    path = f"/v2/models/{r.embedder('E11').triton_model}/infer"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: post(server.http_url, path, body, {}),
                                [bad, good] * 4))
    for (status, text), sent in zip(answers, [bad, good] * 4, strict=True):
        if sent is bad:
            assert status == 400 and "input_ids" in text and "1000000000" in text, text
        else:
            assert status == 200, text
