"""The real tritonserver on free loopback ports, started once per test session."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ensemble.server import Ports, TritonServer, free_ports


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    srv = TritonServer(repository, Ports(*free_ports(3)), log)
    srv.start(timeout=600)
    yield srv
    srv.stop()
    assert srv.process is None


@pytest.fixture(autouse=True)
def serving(request) -> Iterator[None]:
    """A test on the session's server starts once it serves. When the watchdog restarts
    tritonserver during a test (a stall or a crash it heals), that test fails on its own;
    the tests after it wait for the restart instead of failing while it is under way."""
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        deadline = time.monotonic() + 600
        while not srv.ready():
            stalls = srv.watchdog.stalls if srv.watchdog is not None else []
            assert time.monotonic() < deadline, (
                f"the session's server has not served for 600 s (stalls healed: {stalls})")
            time.sleep(0.5)
    yield


@pytest.fixture(scope="session")
def reference(repository):
    from ensemble.pipeline import Pipeline

    return Pipeline(repository)
