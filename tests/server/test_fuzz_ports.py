"""make fuzz in short: the same generated requests, seeded, at every public port. Any 5xx,
request without an answer, changed healthy vector, lost readiness or restarted process
fails; the full run (10,000 a port) writes perf/reports/fuzz.md."""

from __future__ import annotations

import pytest

from perf.fuzz import gateway_port, kserve_port
from tests.server.test_gateway import started

pytestmark = pytest.mark.server

N = 200
SEED = 7


def check(tally) -> None:
    assert tally.sent >= N
    assert tally.classes["5xx"] == 0 and tally.classes["none"] == 0, tally.server_faults[:5]
    assert tally.probes >= 1 and tally.probes_changed == 0 and tally.not_ready == 0
    assert tally.restarts == []
    # both kinds of answer were exercised
    assert tally.classes["4xx"] > N // 4 and tally.classes["2xx"] > 0, dict(tally.classes)


@pytest.mark.parametrize("kind", ["HTTP JSON", "HTTP binary", "gRPC"])
def test_fuzzed_kserve_requests_get_no_server_fault(server, kind):
    check(kserve_port(server, kind, N, SEED))


def test_the_gateway_fuzzed_from_its_openapi_document(server, tmp_path_factory):
    gw = started(server.grpc_url, tmp_path_factory)
    try:
        tally = gateway_port(gw, server, N, SEED)
    finally:
        gw.stop()
    check(tally)
    assert tally.contract == []
