"""Failing, slow and killed embedders: every request gets a vector or an error, in time."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from ensemble.server import Ports, TritonServer, free_ports, stub_models, stub_processes
from export.build import linked_repository
from fusedembed_client import FusedEmbedClient
from tests.server.test_metrics import delta, scrape

pytestmark = pytest.mark.server

T0 = 1_700_000_000
DEADLINE_MS = 3000
FAULTS = {
    "e07_code": {"inject_error": "true"},
    "e08_graph": {"inject_delay_ms": str(DEADLINE_MS + 4000)},
    "fused_text_failsafe": {"deadline_ms": str(DEADLINE_MS)},
}


def _inputs(texts):
    text = httpclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    stamp = httpclient.InferInput("TIMESTAMP", [len(texts), 1], "INT64")
    stamp.set_data_from_numpy(np.array([[T0]] * len(texts), dtype=np.int64))
    return [text, stamp]


def inject_faults(cfg: mc.ModelConfig) -> None:
    """FAULTS set as parameters of the models' configs."""
    if cfg.name not in FAULTS:
        return
    for key, value in FAULTS[cfg.name].items():
        cfg.parameters[key].string_value = value
    cfg.ClearField("model_warmup")  # warm-up would meet the fault and fail the load


@pytest.fixture(scope="module")
def fault_server(repository, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    repo = linked_repository(repository, tmp / "repo", inject_faults, "faults injected")
    srv = TritonServer(repo, Ports(*free_ports(3)), tmp / "triton.log")
    srv.start(timeout=600)
    yield srv
    srv.stop()


def test_failsafe_equals_fused_text_when_every_embedder_is_healthy(server):
    client = httpclient.InferenceServerClient(server.http_url)
    texts = ["the fail-safe path", "and the ensemble agree", "on healthy servers"]
    fused = client.infer("fused_text", _inputs(texts)).as_numpy("FUSED")
    safe = client.infer("fused_text_failsafe", _inputs(texts))
    assert not safe.as_numpy("MISSING").any()
    cosine = np.sum(fused * safe.as_numpy("FUSED"), axis=1)
    assert np.all(cosine >= 0.9999), cosine


def test_failsafe_fills_a_failing_and_a_slow_embedder(fault_server):
    client = httpclient.InferenceServerClient(fault_server.http_url, network_timeout=120)
    before = scrape(fault_server)
    start = time.monotonic()
    result = client.infer("fused_text_failsafe", _inputs(["degraded but answered", "twice"]))
    elapsed = time.monotonic() - start
    missing = result.as_numpy("MISSING")
    blocks = [f"E{i}" for i in range(1, 13)]
    assert [{b for b, m in zip(blocks, row) if m} for row in missing] == [{"E7", "E8"}] * 2
    after = scrape(fault_server)
    for block in blocks:  # the metric counts the blocks left out, one per text
        assert (delta(after, before, "fusedembed_failsafe_missing_blocks_total", block=block)
                == (2 if block in ("E7", "E8") else 0)), block
    fused = result.as_numpy("FUSED")
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    assert elapsed < DEADLINE_MS / 1000 + 3.0  # the slow embedder was not waited for
    # A fault of ours is a server error (retried by clients), never a client error.
    with pytest.raises(InferenceServerException, match="injected fault") as err:
        client.infer("fused_text", _inputs(["the plain ensemble fails with E7"]))
    assert err.value.status() == "500"
    grpc = grpcclient.InferenceServerClient(fault_server.grpc_url)
    inputs = [grpcclient.InferInput(i.name(), i.shape(), i.datatype()) for i in _inputs(["x"])]
    inputs[0].set_data_from_numpy(np.array([[b"over gRPC"]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[T0]], dtype=np.int64))
    with pytest.raises(InferenceServerException, match="injected fault") as err:
        grpc.infer("fused_text", inputs)
    assert err.value.status() == "StatusCode.INTERNAL"
    assert client.is_server_ready()


@pytest.mark.restarts
def test_a_killed_stub_fails_fast_and_comes_back(server, reference):
    """Under load, kill E12's stub: requests get errors or vectors, none hangs, every vector
    is the right one, and the watchdog reloads the model so later requests are answered with
    the same vector as before the kill."""
    assert server.watchdog is not None
    pid = stub_processes(server.pid)["e12_late_interaction"]
    outcomes: list[tuple[str, float]] = []
    answered: dict[str, np.ndarray] = {}
    stop = threading.Event()

    def load(worker: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        i = 0
        while not stop.is_set():
            begin = time.monotonic()
            text = f"load {worker} {i % 8}"
            try:
                result = client.infer("fused_text", _inputs([text]))
                outcomes.append(("vector", time.monotonic() - begin))
                answered[text] = result.as_numpy("FUSED")[0]
            except Exception:  # noqa: BLE001 - counted as an error answer
                outcomes.append(("error", time.monotonic() - begin))
            i += 1

    workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    time.sleep(2.0)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "e12_late_interaction" not in server.watchdog.restarts:
        assert time.monotonic() < deadline, "the watchdog did not reload the dead stub"
        time.sleep(0.2)
    time.sleep(3.0)
    stop.set()
    for w in workers:
        w.join()
    assert outcomes and max(d for _, d in outcomes) < 30.0  # nothing hung
    # Requests in flight at the kill may get an error (or, killed between batches, none
    # does); every vector answered around it is the right one.
    texts = sorted(answered)
    expected = reference.embed(texts, np.full(len(texts), T0, dtype=np.int64)).fused
    for text, want in zip(texts, expected, strict=True):
        assert float(answered[text] @ want) >= 0.9999, text
    assert "e12_late_interaction" in stub_models(server.pid)
    after = "after the restart"
    want = reference.embed([after], np.array([T0], dtype=np.int64)).fused[0]
    with FusedEmbedClient(server.http_url) as client:
        got = client.embed(after, T0).vector
    assert got.shape == (1536,) and float(got @ want) >= 0.9999



def test_the_gateway_answers_a_failed_embedder_with_424_naming_it(fault_server,
                                                                  tmp_path_factory):
    from tests.server.test_gateway import post, started

    gateway = started(fault_server.grpc_url, tmp_path_factory)
    try:
        status, answer = post(f"{gateway.url}/v1/embeddings",
                              {"input": ["E7 fails here"], "timestamp": T0})
        assert status == 424, answer
        assert answer["error"]["message"].startswith("model e07_code failed")
        status, answer = post(f"{gateway.url}/embed", {"inputs": "and on the TEI route"})
        assert (status, answer["error_type"]) == (424, "Backend"), answer
        assert "e07_code" in answer["error"]
    finally:
        gateway.stop()
