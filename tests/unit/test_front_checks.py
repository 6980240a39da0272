"""The public front's request checks without a server: requests built by tritonclient itself
pass; every declared size that disagrees with the config, the limits or the data is refused
with a message naming the input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import _utils as grpc_utils

from ensemble.front.checks import ModelSpec, RequestFault, check_grpc, check_http
from export import registry as r
from export.repository import ensemble_config

T0 = 1_700_000_000


@pytest.fixture(scope="module")
def model() -> ModelSpec:
    # As Triton reports it (GET /v2/models/fused_text/config: int64 dims as strings).
    return ModelSpec.from_config(MessageToDict(ensemble_config(r.ENSEMBLE_MODEL),
                                               preserving_proto_field_name=True))


def _inputs(module, texts: list[bytes], binary: bool | None = None) -> list:
    text = module.InferInput(r.TEXT, [len(texts), 1], "BYTES")
    stamp = module.InferInput(r.TIMESTAMP, [len(texts), 1], "INT64")
    array = np.array(texts, dtype=np.object_).reshape(-1, 1)
    stamps = np.full((len(texts), 1), T0, dtype=np.int64)
    if binary is None:
        text.set_data_from_numpy(array)
        stamp.set_data_from_numpy(stamps)
    else:
        text.set_data_from_numpy(array, binary_data=binary)
        stamp.set_data_from_numpy(stamps, binary_data=binary)
    return [text, stamp]


def http_body(texts: list[bytes], binary: bool) -> tuple[dict, memoryview]:
    body, header = httpclient.InferenceServerClient.generate_request_body(
        _inputs(httpclient, texts, binary),
        [httpclient.InferRequestedOutput(r.FUSED, binary_data=binary)])
    raw = body if isinstance(body, bytes) else body.encode()
    header = header or len(raw)
    return json.loads(raw[:header]), memoryview(raw)[header:]


def grpc_request(texts: list[bytes], typed: bool = False):
    """As tritonclient sends it (raw_input_contents), or with typed ``contents``."""
    request = grpc_utils._get_inference_request(
        r.ENSEMBLE_MODEL, _inputs(grpcclient, texts), "", "",
        [grpcclient.InferRequestedOutput(r.FUSED)], 0, False, False, 0, None, None)
    if typed:
        del request.raw_input_contents[:]
        request.inputs[0].contents.bytes_contents.extend(texts)
        request.inputs[1].contents.int64_contents.extend([T0] * len(texts))
    return request


def refused(check, *args) -> str:
    with pytest.raises(RequestFault) as caught:
        check(*args)
    return str(caught.value)


@pytest.mark.parametrize("binary", [False, True])
def test_requests_made_by_tritonclient_pass(model, binary):
    check_http(model, *http_body([b"one", "zw\u00f6lf".encode(), b""], binary))
    check_grpc(model, grpc_request([b"one", b"two"]))
    check_grpc(model, grpc_request([b"one", b"two"], typed=True))


def test_the_declared_shape_of_the_issue_is_refused_naming_the_input(model):
    request, binary = http_body([b"a", b"b", b"c"], False)
    request["inputs"][1]["shape"] = [2**40, 1]
    message = refused(check_http, model, request, binary)
    assert "TIMESTAMP" in message and "1099511627776" in message and "32" in message


BAD_SHAPES = [
    ([-1, 1], "negative"),
    ([1, -(2**63)], "negative"),
    ([2**63 - 1, 1], "batch"),
    ([0, 1], "batch"),
    ([33, 1], "1 to 32"),
    ([3, 2], "takes 1"),
    ([3, 2**62], "takes 1"),
    ([3], "dimensions"),
    ([3, 1, 1], "dimensions"),
]
JSON_ONLY_SHAPES = [  # not even expressible as gRPC's repeated int64
    ([2**64 + 1, 1], "batch"),
    ([1, 2**100], "takes 1"),
    ("3,1", "list of integers"),
    ([3.0, 1], "list of integers"),
    ([True, 1], "list of integers"),
    (None, "list of integers"),
]


@pytest.mark.parametrize("shape, words", BAD_SHAPES + JSON_ONLY_SHAPES)
@pytest.mark.parametrize("binary", [False, True])
def test_shapes_out_of_the_config_are_refused_over_http(model, binary, shape, words):
    request, blob = http_body([b"a", b"b", b"c"], binary)
    request["inputs"][1]["shape"] = shape
    message = refused(check_http, model, request, blob)
    assert message.startswith("input 'TIMESTAMP'") and words in message


@pytest.mark.parametrize("shape, words", BAD_SHAPES)
def test_shapes_out_of_the_config_are_refused_over_grpc(model, shape, words):
    request = grpc_request([b"a", b"b", b"c"])
    del request.inputs[1].shape[:]
    request.inputs[1].shape.extend(shape)
    message = refused(check_grpc, model, request)
    assert message.startswith("input 'TIMESTAMP'") and words in message


@pytest.mark.parametrize("binary", [False, True])
def test_a_shape_that_disagrees_with_its_data_is_refused(model, binary):
    request, blob = http_body([b"a", b"b", b"c"], binary)
    request["inputs"][0]["shape"] = [2, 1]
    request["inputs"][1]["shape"] = [2, 1]
    message = refused(check_http, model, request, blob)
    assert "TEXT" in message and "2 elements" in message


def test_binary_sizes_are_checked_against_the_body(model):
    request, blob = http_body([b"a", b"b", b"c"], True)
    request["inputs"][1]["parameters"]["binary_data_size"] = 2**40
    assert "runs past" in refused(check_http, model, request, blob)
    request, blob = http_body([b"a", b"b", b"c"], True)
    assert "belong to no input" in refused(check_http, model, request,
                                           memoryview(bytes(blob) + b"xx"))
    request, blob = http_body([b"a", b"b", b"c"], True)
    request["inputs"][0]["parameters"]["binary_data_size"] -= 1  # TEXT's last item cut
    request["inputs"][1]["parameters"]["binary_data_size"] += 1
    message = refused(check_http, model, request, blob)
    assert "TEXT" in message and "past the end" in message


def test_a_bytes_item_length_past_the_end_is_refused(model):
    request, blob = http_body([b"abc"], True)
    raw = bytearray(blob)
    raw[0:4] = (2**32 - 1).to_bytes(4, "little")
    message = refused(check_http, model, request, memoryview(bytes(raw)))
    assert "TEXT" in message and "4294967295 bytes" in message


@pytest.mark.parametrize("mutate, words", [
    (lambda q: q.update(inputs={"TEXT": 1}), "inputs: must be a non-empty array"),
    (lambda q: q.update(inputs=[]), "inputs: must be a non-empty array"),
    (lambda q: q["inputs"].append(q["inputs"][0]), "given twice"),
    (lambda q: q["inputs"].pop(1), "input 'TIMESTAMP': missing"),
    (lambda q: q["inputs"][0].update(name="TEXTS"), "no such input"),
    (lambda q: q["inputs"][0].update(name=["TEXT"]), "no such input"),
    (lambda q: q["inputs"][1].update(datatype="FP32"), "datatype 'FP32'"),
    (lambda q: q["inputs"][1].update(data=["x"]), "data[0]"),
    (lambda q: q["inputs"][1].update(data=[2**63]), "data[0]"),
    (lambda q: q["inputs"][1].update(data=[True]), "data[0]"),
    (lambda q: q["inputs"][0].update(data=[5]), "data[0]"),
    (lambda q: q["inputs"][0].update(data="a"), "data must be an array"),
    (lambda q: q["inputs"][0].pop("data"), "no data"),
    (lambda q: q["inputs"][1].update(parameters={"binary_data_size": 8}), "both data"),
    (lambda q: q.update(outputs=[{"name": "NOPE"}]), "output 'NOPE'"),
    (lambda q: q.update(outputs=[{"name": r.FUSED, "parameters": {"binary_data": "yes"}}]),
     "binary_data"),
    (lambda q: q.update(outputs=[{"name": r.FUSION_VERSION, "parameters":
                                  {"classification": 2}}]), "classification"),
    (lambda q: q.update(parameters={"timeout": -1}), "parameters.timeout"),
    (lambda q: q.update(parameters=[1]), "parameters: must be an object"),
    (lambda q: q.update(parameters=None), "parameters: must be an object"),
    (lambda q: q.update(outputs=None), "outputs: must be an array"),
    (lambda q: q["inputs"][0].update(parameters=None), "input 'TEXT': parameters"),
    (lambda q: q["inputs"][0].update(data=None), "data must be an array"),
    (lambda q: q.update(id=7), "id: must be a string"),
])
def test_malformed_json_requests_are_refused_by_field(model, mutate, words):
    request, blob = http_body([b"a"], False)
    mutate(request)
    assert words in refused(check_http, model, request, blob)


def test_nesting_follows_row_major_order_and_is_bounded(model):
    request, blob = http_body([b"a", b"b"], False)
    request["inputs"][0]["data"] = [["a"], ["b"]]
    check_http(model, request, blob)
    deep: list = ["a"]
    for _ in range(200):
        deep = [deep]
    request["inputs"][0].update(shape=[1, 1], data=deep)
    request["inputs"][1].update(shape=[1, 1], data=[T0])
    assert "nested deeper" in refused(check_http, model, request, blob)


def test_grpc_contents_must_match_the_declared_shape(model):
    request = grpc_request([b"a", b"b"], typed=True)
    request.inputs[1].contents.int64_contents.append(T0)
    assert "contents carry 3" in refused(check_grpc, model, request)
    request = grpc_request([b"a", b"b"], typed=True)
    request.raw_input_contents.append(b"\0" * 16)
    assert "raw_input_contents" in refused(check_grpc, model, request)
    request = grpc_request([b"a", b"b"], typed=True)
    request.inputs[1].contents.fp32_contents.append(1.0)
    assert "int64_contents" in refused(check_grpc, model, request)


def test_grpc_raw_contents_are_sized_by_the_shape(model):
    request = grpc_request([b"a", b"b"])
    request.inputs[1].shape[0] = 2**40
    assert "TIMESTAMP" in refused(check_grpc, model, request)
    request = grpc_request([b"a", b"b"])
    request.raw_input_contents[1] = b"\0" * 15
    assert "15 bytes" in refused(check_grpc, model, request)
    request = grpc_request([b"a", b"b"])
    request.raw_input_contents[0] = (2**31).to_bytes(4, "little") + b"a"
    assert "past the end" in refused(check_grpc, model, request)
    request = grpc_request([b"a", b"b"])
    request.inputs[0].contents.bytes_contents.append(b"a")
    assert "beside raw_input_contents" in refused(check_grpc, model, request)


def test_the_body_limit_admits_the_largest_valid_request():
    largest_texts = r.ENSEMBLE_MAX_BATCH_SIZE * 6 * r.LIMITS.max_text_bytes
    largest_images = r.ENSEMBLE_MAX_BATCH_SIZE * r.LIMITS.max_image_bytes
    assert max(largest_texts, largest_images) < r.LIMITS.max_request_bytes < 2**31
