"""The real tritonserver on free loopback ports, started once per test session."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ensemble.server import Ports, TritonServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    srv = TritonServer(repository, Ports(free_port(), free_port(), free_port()), log)
    srv.start(timeout=600)
    yield srv
    srv.stop()
    assert srv.process is None


@pytest.fixture(scope="session")
def reference(repository):
    from ensemble.pipeline import Pipeline

    return Pipeline(repository)
