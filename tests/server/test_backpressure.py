"""Bounded load on the real server: the worst valid burst stays within the memory budget, and
a burst beyond the queues is refused at once with UNAVAILABLE, never queued without bound."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.registry import MEMORY_BUDGET
from fusedembed_client import FusedEmbedClient, Retry
from perf.burst import BURST_REQUESTS, TEXTS_PER_REQUEST, burst, limit_texts, total

pytestmark = pytest.mark.server

T0 = 1_700_000_000
BURST = 200  # concurrent requests, each of 32 texts
REFUSED = "StatusCode.UNAVAILABLE"
ANSWER_S = 600.0  # no answer, vector or refusal, may take longer: nothing hangs


def test_the_worst_valid_burst_stays_within_the_memory_budget(server, repository):
    """8 concurrent requests of 32 texts past every model's token limit: the whole server's
    sampled peak stays under the documented budget, every process under its own, and the
    server returns within 1 GiB of its warm baseline."""
    result = burst(server, limit_texts(TEXTS_PER_REQUEST * 2, repository), BURST_REQUESTS)
    assert [o for o, _ in result.outcomes] == ["vector"] * BURST_REQUESTS
    assert result.peak_total <= MEMORY_BUDGET.server_mib, (result.peak_total, result.peaks)
    over = {p: m for p, m in result.peaks.items() if m > MEMORY_BUDGET.process_mib(p)}
    assert over == {}
    assert total(result.after) - total(result.baseline) <= 1024, (result.baseline, result.after)


def _request(i: int) -> tuple[str, float]:
    texts = [f"burst request {i} text {j}: a few ordinary words to embed" for j in range(32)]
    text = np.array([[t.encode()] for t in texts], dtype=np.object_)
    stamp = np.full((len(texts), 1), T0, dtype=np.int64)
    inputs = [grpcclient.InferInput("TEXT", list(text.shape), "BYTES"),
              grpcclient.InferInput("TIMESTAMP", list(stamp.shape), "INT64")]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(stamp)
    return inputs


def test_a_burst_beyond_the_queues_is_refused_at_once_and_nothing_is_lost(server):
    def send(i: int) -> tuple[str, float]:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        start = time.monotonic()
        try:
            fused = client.infer("fused_text", _request(i), client_timeout=ANSWER_S,
                                 outputs=[grpcclient.InferRequestedOutput("FUSED")]
                                 ).as_numpy("FUSED")
            norms = np.linalg.norm(fused, axis=1)
            ok = fused.shape == (32, 1536) and np.allclose(norms, 1.0, atol=1e-4)
            return ("vector" if ok else "bad vector"), time.monotonic() - start
        except InferenceServerException as err:
            return str(err.status()), time.monotonic() - start
        finally:
            client.close()

    start = time.monotonic()
    with ThreadPoolExecutor(BURST) as pool:
        outcomes = list(pool.map(send, range(BURST)))
    elapsed = time.monotonic() - start
    kinds = {o for o, _ in outcomes}
    assert len(outcomes) == BURST and kinds <= {"vector", REFUSED}, kinds
    served = [s for o, s in outcomes if o == "vector"]
    refused = [s for o, s in outcomes if o == REFUSED]
    assert served and refused  # the queues filled, and what they held was served
    # A refusal comes without waiting for the work queued before it.
    assert np.median(refused) < 0.25 * max(served), (np.median(refused), max(served))
    assert elapsed < ANSWER_S
    # Right after, the server answers normally, and the client library retries refusals.
    with FusedEmbedClient(server.grpc_url, "grpc", retry=Retry(deadline_s=60.0)) as client:
        assert client.embed("after the burst", T0).vector.shape == (1536,)
