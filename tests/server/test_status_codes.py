"""Every error caused by the request is a client error (HTTP 400, gRPC INVALID_ARGUMENT) on
every public entry point, so that clients, proxies and SDKs do not retry it; the message
still names the field."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.registry import CACHED_MODEL, ENSEMBLE_MODEL, FAILSAFE_MODEL, PREPROCESS_MODEL
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
        "SPARSE_TOP_K": ("SPARSE_TOP_K", np.array([[-1]], dtype=np.int32), "INT32"),
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
# fused_text's own outputs' controls (not on the cached entry point).
NATIVE_CASES = {
    "SPARSE_TOP_K out of range": ([b"x"], [T0], "SPARSE_TOP_K",
                                  r"SPARSE_TOP_K\[0\]: -1 is outside 0\.\.\d+"),
}
# The gate controls and TRUNCATE act on the blocks; the cached entry point has them too.
ENTRY_POINTS = (ENSEMBLE_MODEL, FAILSAFE_MODEL, CACHED_MODEL)
# Refused by a step after the first until the first checked them too: KIND and TRUNCATE by
# the token embedders, SPARSE_TOP_K by E6, the gate controls by FuseMoE.
LATER_CASES = ("bad KIND", "TRUNCATE=false over a limit", "TOP_K out of range",
               "no block present", "SPARSE_TOP_K out of range")


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


def _misanswered(client, mod, model: str, cases: dict, status: str) -> dict:
    """The cases not refused with ``status`` and their expected message: what came back."""
    wrong = {}
    for case, (texts, stamps, extra, message) in cases.items():
        try:
            client.infer(model, _request(mod, texts, stamps, extra))
            wrong[case] = "answered"
        except InferenceServerException as err:
            if err.status() != status or not re.search(message, str(err)):
                wrong[case] = (err.status(), str(err)[:160])
    return wrong


@pytest.mark.parametrize("model", ENTRY_POINTS)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_request_error_is_a_client_error(server, protocol, model):
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    assert _misanswered(client, mod, model, CASES, CLIENT_ERROR[protocol]) == {}
    assert client.is_server_ready() and client.is_model_ready(model)
    ok = client.infer(model, _request(mod, [b"still served"], [T0], None)).as_numpy("FUSED")
    np.testing.assert_allclose(np.linalg.norm(ok, axis=1), 1.0, atol=1e-5)



def _answered(client) -> dict[str, int]:
    """Requests each model has answered so far, successes and failures."""
    return {m["name"]: sum(int(m["inference_stats"][k].get("count", 0)) for k in ("success", "fail"))
            for m in client.get_inference_statistics(as_json=True)["model_stats"]}


def _quiet(client, settled_s: float = 3.0, within_s: float = 60.0) -> dict[str, int]:
    """The answered counts once none has moved for ``settled_s`` (requests an earlier test
    left running end first)."""
    deadline = time.monotonic() + within_s
    last, since = _answered(client), time.monotonic()
    while time.monotonic() - since < settled_s:
        assert time.monotonic() < deadline, "the server did not go quiet within 60 s"
        time.sleep(0.5)
        now = _answered(client)
        if now != last:
            last, since = now, time.monotonic()
    return last


@pytest.mark.parametrize("model", (ENSEMBLE_MODEL, CACHED_MODEL))
def test_a_request_error_is_refused_by_the_first_step_before_any_other_runs(server, model):
    """Every client error of an ensemble is refused by its first step (or the front): on
    Triton 2.51 a step that refuses a request while the request's other steps run can leave
    one of their instances waiting for good, and the requests behind it stall (a KIND or
    TRUNCATE refused by the token embedders stalled E9 until the watchdog restarted
    tritonserver)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    steps = {s["model_name"] for s in client.get_model_config(model, as_json=True)["config"]
             ["ensemble_scheduling"]["step"]} - {PREPROCESS_MODEL}
    cases = CASES | (NATIVE_CASES if model == ENSEMBLE_MODEL else {})
    before = _quiet(client)
    wrong = _misanswered(client, grpcclient, model, cases, CLIENT_ERROR["grpc"])
    after = _quiet(client)
    assert wrong == {}
    assert {m: after[m] - before[m] for m in sorted(steps) if after[m] != before[m]} == {}


def test_refusals_among_valid_requests_from_many_clients_stall_nothing(server):
    """Many clients at once, each sending requests that later steps refused and valid ones in
    turn: every valid request gets its vector (a stall in any step fails the test through
    the watchdog, and its requests time out)."""
    cases = [CASES[c] if c in CASES else NATIVE_CASES[c] for c in LATER_CASES]
    vectors, failures = [], []

    def client_loop(n: int) -> None:
        mod = grpcclient if n % 2 else httpclient
        client = (grpcclient.InferenceServerClient(server.grpc_url) if n % 2 else
                  httpclient.InferenceServerClient(server.http_url, network_timeout=60.0))
        timeout = {"client_timeout": 60.0} if n % 2 else {}
        for i in range(90):
            texts, stamps, extra, _ = cases[(n + i) % len(cases)]
            try:
                client.infer(ENSEMBLE_MODEL, _request(mod, texts, stamps, extra))
                failures.append(f"client {n}: an invalid request was answered")
            except InferenceServerException:
                pass
            if i % 3 == 2:
                try:
                    fused = client.infer(ENSEMBLE_MODEL, _request(
                        mod, [f"valid {n} {i}".encode()], [T0], None), **timeout)
                    vectors.append(fused.as_numpy("FUSED").shape)
                except Exception as err:  # noqa: BLE001 - every failure is reported
                    failures.append(f"client {n}: {err}")

    clients = [threading.Thread(target=client_loop, args=(n,)) for n in range(6)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    assert failures == []
    assert vectors == [(1, 1536)] * 180
