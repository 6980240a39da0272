"""The fail-safe's circuit breakers on a real server: an embedder hung with SIGSTOP is
skipped at once once its breaker opens, and taken back after SIGCONT within the cool-down."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc

from ensemble.server import Ports, TritonServer, free_ports, stub_processes
from export.build import linked_repository
from export.registry import EMBEDDERS
from tests.server.test_metrics import delta, scrape

pytestmark = pytest.mark.server

T0 = 1_700_000_000
HUNG = "e08_graph"  # a Python-backend embedder the fail-safe may do without
BLOCK = next(s.id for s in EMBEDDERS if s.triton_model == HUNG)
DEADLINE_MS, FAILURES, COOLDOWN_MS = 2000, 2, 3000
SETTINGS = {"deadline_ms": DEADLINE_MS, "breaker_failures": FAILURES,
            "breaker_cooldown_ms": COOLDOWN_MS, "breaker_probes": 1}


@pytest.fixture(scope="module")
def hold(tmp_path_factory) -> Path:
    """While this file exists, every batch of the HUNG embedder waits (alive, not answering)."""
    return tmp_path_factory.mktemp("hold") / "hold"


@pytest.fixture(scope="module")
def breaker_server(repository, tmp_path_factory, hold):
    def settings(cfg: mc.ModelConfig) -> None:
        if cfg.name == "fused_text_failsafe":
            for key, value in SETTINGS.items():
                cfg.parameters[key].string_value = str(value)
        if cfg.name == HUNG:
            cfg.parameters["inject_hold_path"].string_value = str(hold)

    tmp = tmp_path_factory.mktemp("breaker")
    repo = linked_repository(repository, tmp / "repo", settings, "short breaker settings")
    srv = TritonServer(repo, Ports(*free_ports(3)), tmp / "triton.log")
    srv.start(timeout=600)
    yield srv
    srv.stop()


def failsafe(client, text: str) -> tuple[set[str], float]:
    """The blocks a fail-safe request went without, and how long it took."""
    text_in = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    text_in.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    stamp = httpclient.InferInput("TIMESTAMP", [1, 1], "INT64")
    stamp.set_data_from_numpy(np.array([[T0]], dtype=np.int64))
    start = time.monotonic()
    answer = client.infer("fused_text_failsafe", [text_in, stamp])
    elapsed = time.monotonic() - start
    fused = answer.as_numpy("FUSED")
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    missing = answer.as_numpy("MISSING")[0]
    return {s.id for s, m in zip(EMBEDDERS, missing) if m}, elapsed


def state(server) -> float:
    return scrape(server)[("fusedembed_breaker_state", (("block", BLOCK),))]


def healthy_latency(client) -> float:
    elapsed = []
    for i in range(5):
        missing, seconds = failsafe(client, f"healthy {i}")
        assert missing == set()
        elapsed.append(seconds)
    return float(np.median(elapsed))


def closes_again(server, client, since: float, within_s: float,
                 slowest_s: float | None) -> None:
    """Requests until the block is back; none waits over slowest_s; it is back in time."""
    while True:
        missing, elapsed = failsafe(client, "back again?")
        if not missing:
            break
        assert missing == {BLOCK}
        assert slowest_s is None or elapsed < slowest_s  # a probe is never waited for long
        assert time.monotonic() - since < within_s, "the breaker never closed again"
        time.sleep(0.1)
    assert state(server) == 0.0


def test_a_hung_embedder_is_skipped_once_its_breaker_opens_and_taken_back_after(
        breaker_server, hold):
    client = httpclient.InferenceServerClient(breaker_server.http_url, network_timeout=60)
    normal = healthy_latency(client)
    assert state(breaker_server) == 0.0
    before = scrape(breaker_server)
    hold.touch()
    try:
        for i in range(FAILURES):  # each waits the whole deadline for the hung embedder
            missing, elapsed = failsafe(client, f"hung {i}")
            assert missing == {BLOCK} and elapsed >= DEADLINE_MS / 1000
        assert state(breaker_server) == 1.0
        skipped = []
        for i in range(5):
            missing, elapsed = failsafe(client, f"open {i}")
            assert missing == {BLOCK}
            skipped.append(elapsed)
        # Skipped at once: about the healthy latency, far from the deadline.
        assert float(np.median(skipped)) < normal + 0.25, (skipped, normal)
        assert max(skipped) < DEADLINE_MS / 1000 / 2, skipped
        time.sleep(COOLDOWN_MS / 1000)
        missing, elapsed = failsafe(client, "the probe meets the hang")  # half-open: a probe
        assert missing == {BLOCK} and elapsed < DEADLINE_MS / 1000 / 2 + normal
        time.sleep(DEADLINE_MS / 1000 + 0.3)  # the probe missed its deadline: open again
        assert state(breaker_server) == 1.0
    finally:
        hold.unlink(missing_ok=True)
    released = time.monotonic()
    closes_again(breaker_server, client, released, COOLDOWN_MS / 1000 + 5.0,
                 DEADLINE_MS / 1000 / 2 + normal)
    after = scrape(breaker_server)
    for to, times in (("open", 2), ("half-open", 2), ("closed", 1)):
        assert delta(after, before, "fusedembed_breaker_transitions_total",
                     block=BLOCK, to=to) >= times, to
    for spec in EMBEDDERS:  # the others never moved
        if spec.id != BLOCK:
            assert delta(after, before, "fusedembed_breaker_transitions_total",
                         block=spec.id, to="open") == 0, spec.id


def test_a_stopped_stub_opens_the_breaker_and_it_closes_once_the_model_is_back(
        breaker_server):
    """SIGSTOP: this Triton finds the stub unhealthy and fails its requests at once; the
    breaker opens, the launcher's watchdog replaces the stubs, the breaker closes again."""
    client = httpclient.InferenceServerClient(breaker_server.http_url, network_timeout=60)
    healthy_latency(client)
    stubs = [pid for name, pid in stub_processes(breaker_server.pid, every_instance=True).items()
             if name.split("#")[0] == HUNG]
    assert stubs
    for pid in stubs:
        os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        while state(breaker_server) != 1.0:
            missing, _ = failsafe(client, "stopped")
            assert missing == {BLOCK}
            assert time.monotonic() - stopped < FAILURES * DEADLINE_MS / 1000 + 5.0
    finally:
        for pid in stubs:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # replaced already
    # No bound on each request's time here: while the watchdog reloads the model, Triton
    # holds every request (1.7 s measured), skipped block or not.
    closes_again(breaker_server, client, stopped, COOLDOWN_MS / 1000 + 60.0, None)
