"""Every error caused by the request is a client error (HTTP 400, gRPC INVALID_ARGUMENT) on
every public entry point, so that clients, proxies and SDKs do not retry it; the message
still names the field."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.registry import CACHED_MODEL, ENSEMBLE_MODEL, FAILSAFE_MODEL
from tests.server.test_validation import BAD, T0, _inputs

pytestmark = pytest.mark.server

CLIENT_ERROR = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
LONG_TEXT = " ".join(["word"] * 300)  # over E8's 128 tokens


def _tensor(mod, name, value, dtype):
    t = mod.InferInput(name, list(value.shape), dtype)
    t.set_data_from_numpy(value)
    return t


def _extra(name):
    """The optional input of a case as (name, value, Triton dtype)."""
    return {
        "KIND": ("KIND", np.array([[b"document"]], dtype=np.object_), "BYTES"),
        "TOP_K": ("TOP_K", np.array([[9]], dtype=np.int32), "INT32"),
        "TEMPERATURE": ("TEMPERATURE", np.array([[0.0]], dtype=np.float32), "FP32"),
        "FOCUS": ("FOCUS", np.full((1, 12), -1.0, dtype=np.float32), "FP32"),
        "PRESENCE": ("PRESENCE", np.zeros((1, 12), dtype=bool), "BOOL"),
        "TRUNCATE": ("TRUNCATE", np.zeros((1, 1), dtype=bool), "BOOL"),
    }[name]


# case -> (texts, timestamps, optional input or None, expected message)
CASES = {case: (texts, stamps, None, message) for case, (texts, stamps, message) in BAD.items()}
CASES |= {
    "bad KIND": ([b"x"], [T0], "KIND", r"KIND: must be 'query' or 'passage'"),
    "TOP_K out of range": ([b"x"], [T0], "TOP_K", r"TOP_K\[0\]: 9 is outside 1\.\.8"),
    "TEMPERATURE out of range": ([b"x"], [T0], "TEMPERATURE", r"TEMPERATURE\[0\]: 0\.0"),
    "FOCUS out of range": ([b"x"], [T0], "FOCUS", r"FOCUS\[0\]\[0\] \(E1\): -1\.0"),
    "no block present": ([b"x"], [T0], "PRESENCE", "no block left to fuse"),
    "TRUNCATE=false over a limit": ([LONG_TEXT.encode()], [T0], "TRUNCATE",
                                    r"tokens exceed the \d+-token limit"),
    "33 texts": ([b"x"] * 33, [T0] * 33, None, "32"),
    "timestamps for other rows": ([b"a", b"b"], [T0], None, "TIMESTAMP|shape|batch"),
}
# The gate controls and TRUNCATE act on the blocks; the cached entry point has them too.
ENTRY_POINTS = (ENSEMBLE_MODEL, FAILSAFE_MODEL, CACHED_MODEL)


def _request(mod, texts, stamps, extra):
    if len(stamps) != len(texts):  # rows that disagree: sent as given
        text = _tensor(mod, "TEXT", np.array([[t] for t in texts], dtype=np.object_), "BYTES")
        stamp = _tensor(mod, "TIMESTAMP", np.array([[s] for s in stamps], dtype=np.int64),
                        "INT64")
        return [text, stamp]
    more = []
    if extra is not None:
        name, value, dtype = _extra(extra)
        more.append(_tensor(mod, name, value, dtype))
    return _inputs(mod, texts, stamps, extra=more)


@pytest.mark.parametrize("model", ENTRY_POINTS)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_request_error_is_a_client_error(server, protocol, model):
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    wrong = {}
    for case, (texts, stamps, extra, message) in CASES.items():
        try:
            client.infer(model, _request(mod, texts, stamps, extra))
            wrong[case] = "answered"
        except InferenceServerException as err:
            if err.status() != CLIENT_ERROR[protocol] or not re.search(message, str(err)):
                wrong[case] = (err.status(), str(err)[:160])
    assert wrong == {}
    assert client.is_server_ready() and client.is_model_ready(model)
    ok = client.infer(model, _request(mod, [b"still served"], [T0], None)).as_numpy("FUSED")
    np.testing.assert_allclose(np.linalg.norm(ok, axis=1), 1.0, atol=1e-5)

