"""The real tritonserver on free loopback ports, started once per test session."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def reference(repository):
    from ensemble.pipeline import Pipeline

    return Pipeline(repository)
