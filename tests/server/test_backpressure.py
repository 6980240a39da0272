"""Bounded load on the real server: the worst valid burst stays within the memory budget, and
a burst beyond the queues is refused at once with UNAVAILABLE, never queued without bound."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ensemble.server import RETURNING_MALLOC, stub_processes
from export.registry import MEMORY_BUDGET
from fusedembed_client import FusedEmbedClient, Retry
from perf.backpressure import FLOOD_REQUESTS, REFUSED, flood, flood_texts
from perf.burst import BURST_REQUESTS, TEXTS_PER_REQUEST, burst, limit_texts, total

pytestmark = pytest.mark.server

T0 = 1_700_000_000
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


def test_tritonserver_and_every_stub_run_with_the_returning_malloc_settings(server):
    pids = {"tritonserver": server.pid} | stub_processes(server.pid, every_instance=True)
    assert len(pids) > 10
    for name, pid in pids.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        settings = dict(e.decode().split("=", 1) for e in environ if e.startswith(b"MALLOC_"))
        assert settings == RETURNING_MALLOC, (name, settings)


def test_a_burst_beyond_the_queues_is_refused_at_once_and_nothing_is_lost(server, reference):
    """A refusal is an UNAVAILABLE that says a queue is full (a server that is down answers
    UNAVAILABLE too, and is no refusal); a served request gets the reference's vectors."""
    expected = {k: reference.embed(flood_texts(k), np.full(32, T0, dtype=np.int64)).fused
                for k in range(4)}
    start = time.monotonic()
    outcomes = flood(server.grpc_url, FLOOD_REQUESTS, ANSWER_S, expected)
    elapsed = time.monotonic() - start
    kinds = {o for o, _ in outcomes}
    assert len(outcomes) == FLOOD_REQUESTS and kinds <= {"vector", REFUSED}, kinds
    served = [s for o, s in outcomes if o == "vector"]
    refused = [s for o, s in outcomes if o == REFUSED]
    assert served and refused  # the queues filled, and what they held was served
    # A refusal comes without waiting for the work queued before it.
    assert np.median(refused) < 0.25 * max(served), (np.median(refused), max(served))
    assert elapsed < ANSWER_S
    # Right after, the server answers normally, and the client library retries refusals.
    want = reference.embed(["after the burst"], np.array([T0], dtype=np.int64)).fused[0]
    with FusedEmbedClient(server.grpc_url, "grpc", retry=Retry(deadline_s=60.0)) as client:
        got = client.embed("after the burst", T0).vector
    assert got.shape == (1536,) and float(got @ want) >= 0.9999
