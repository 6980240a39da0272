"""The public front in front of the real Triton: Triton's own ports are loopback ports of
their own, streaming passes through it with refusals answered in the stream, and a gRPC
call whose deadline expires is not cancelled in Triton (it completes there; its answer is
dropped)."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ensemble.server import prepare_runtime
from export import registry as r
from fusedembed_client import FusedEmbedClient

pytestmark = pytest.mark.server

T0 = 1_700_000_000


def inputs(texts: list[str], stamp_rows: int | None = None) -> list:
    text = grpcclient.InferInput(r.TEXT, [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    rows = len(texts) if stamp_rows is None else stamp_rows
    stamp = grpcclient.InferInput(r.TIMESTAMP, [rows, 1], "INT64")
    stamp.set_data_from_numpy(np.full((rows, 1), T0, dtype=np.int64))
    return [text, stamp]


def test_triton_listens_on_its_own_loopback_ports(server):
    command = server.command(prepare_runtime())
    inner = server.triton_ports
    assert f"--http-port={inner.http}" in command and f"--grpc-port={inner.grpc}" in command
    assert {inner.http, inner.grpc}.isdisjoint({server.ports.http, server.ports.grpc})
    assert set(server.fronts) == {"http", "grpc"}
    assert all(front.poll() is None for front in server.fronts.values())


def test_a_stream_passes_through_and_a_refusal_is_answered_in_it(server):
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(r.ENSEMBLE_MODEL, inputs(["streamed text"]),
                                  outputs=[grpcclient.InferRequestedOutput(r.FUSED)])
        bad = inputs(["a", "b"], stamp_rows=2)
        bad[1]._input.shape[0] = 2**40  # what tritonclient would not send by itself
        client.async_stream_infer(r.ENSEMBLE_MODEL, bad)
        got = [answers.get(timeout=120) for _ in range(2)]
    finally:
        client.stop_stream()
        client.close()
    results = [result for result, error in got if error is None]
    errors = [error for result, error in got if error is not None]
    assert len(results) == 1 and len(errors) == 1
    assert isinstance(errors[0], InferenceServerException)
    assert "TIMESTAMP" in str(errors[0]) and "1099511627776" in str(errors[0])
    with FusedEmbedClient(server.grpc_url, "grpc") as plain:
        expected = plain.embed("streamed text", T0).vector
    np.testing.assert_allclose(results[0].as_numpy(r.FUSED)[0], expected, atol=1e-5)


def test_an_expired_deadline_is_not_cancelled_in_triton(server):
    """The client gets DEADLINE_EXCEEDED on time; Triton still completes the request (its
    success count grows), so no cancellation reached it."""
    stats = grpcclient.InferenceServerClient(server.triton_grpc_url)

    def successes() -> int:
        answer = stats.get_inference_statistics(r.ENSEMBLE_MODEL, as_json=True)
        return int(answer["model_stats"][0]["inference_stats"]["success"].get("count", 0))

    texts = [f"a text long enough to take a while {i} " * 20 for i in range(32)]
    before = successes()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    start = time.monotonic()
    with pytest.raises(InferenceServerException, match="Deadline"):
        client.infer(r.ENSEMBLE_MODEL, inputs(texts), client_timeout=0.05)
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 300
    while successes() == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert successes() == before + 1
    client.close()
    stats.close()


@pytest.mark.restarts
def test_a_killed_front_is_started_again(server):
    """The watchdog starts a front again that died; the public port answers once more."""
    front = server.fronts["http"]
    front.kill()
    front.wait()
    deadline = time.monotonic() + 30
    while not server.ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.ready()
    assert server.fronts["http"].pid != front.pid
    assert "front:http" in server.watchdog.restarts
    with FusedEmbedClient(server.http_url, "http") as client:
        assert client.embed("after the front came back", T0).vector.shape == (1536,)


def test_the_cancellation_storm_of_the_issue_leaves_the_server_answering(server):
    """Eight tritonclient calls of 32 texts with deadlines of 1 to 300 ms, three rounds, on
    the public gRPC port, then the same clients sending again at once: each call gets
    DEADLINE_EXCEEDED on time; once eight abandoned calls run in Triton the rest wait in the
    front and never reach it; a plain request after each round is answered with the healthy
    vector, and nothing was restarted."""
    import concurrent.futures

    from perf.cancellation import DEADLINES_S

    assert server.watchdog is not None
    restarts = list(server.watchdog.restarts)
    with FusedEmbedClient(server.grpc_url, "grpc") as plain:
        healthy = plain.embed("after the storm", T0).vector
    texts = [f"a text that cannot be embedded in a millisecond {i}" for i in range(32)]

    def call(deadline_s: float) -> str:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            client.infer(r.ENSEMBLE_MODEL, inputs(texts), client_timeout=deadline_s)
            return "answered"
        except InferenceServerException as err:
            return str(err.status())
        finally:
            client.close()

    def plain_request_answered() -> None:
        with FusedEmbedClient(server.grpc_url, "grpc") as plain:
            np.testing.assert_allclose(plain.embed("after the storm", T0).vector, healthy,
                                       atol=1e-5)

    seen = []
    for _ in range(3):  # the issue's rounds
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            seen += list(pool.map(call, DEADLINES_S))
        plain_request_answered()
    # Clients that send again at once, five times each: past eight abandoned calls running
    # in Triton, the others wait in the front, give up there and never reach Triton.
    stats = grpcclient.InferenceServerClient(server.triton_grpc_url)

    def reached() -> int:
        answer = stats.get_inference_statistics(r.ENSEMBLE_MODEL, as_json=True)
        counts = answer["model_stats"][0]["inference_stats"]
        return sum(int(counts[k].get("count", 0)) for k in ("success", "fail"))

    before = reached()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        storm = list(pool.map(call, [d for d in DEADLINES_S for _ in range(5)]))
    plain_request_answered()  # it waited until the abandoned ones ended, then went on
    assert set(seen + storm) <= {"answered", "StatusCode.DEADLINE_EXCEEDED"}
    assert reached() - before - 1 < len(storm) // 2  # most of the storm never reached it
    stats.close()
    assert server.ready() and server.watchdog.restarts == restarts
