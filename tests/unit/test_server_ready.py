"""The launcher counts the server ready only when both fronts serve: a gRPC client that
connects right after ``start()`` must not meet a front that is still starting."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
import tritonclient.grpc.service_pb2 as pb

from ensemble.server import Ports, ServerError, TritonServer, free_ports


class Running:
    """Stands in for tritonserver's process: alive."""

    pid = 0
    returncode = None

    def poll(self) -> None:
        return None


def ready_service(ready: bool) -> grpc.GenericRpcHandler:
    """A gRPC server that answers ServerReady only, with ``ready``."""
    answer = pb.ServerReadyResponse(ready=ready).SerializeToString()
    method = grpc.unary_unary_rpc_method_handler(lambda request, context: answer,
                                                 request_deserializer=None,
                                                 response_serializer=None)
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                {"ServerReady": method})


def launcher() -> TritonServer:
    http, grpc_port, metrics = free_ports(3)
    return TritonServer(ports=Ports(http, grpc_port, metrics), admin_key="k", process=Running())


def serve_later(port: int, ready: bool, after_s: float) -> tuple[threading.Thread, list]:
    started: list[grpc.Server] = []

    def run() -> None:
        time.sleep(after_s)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((ready_service(ready),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        started.append(server)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, started


def test_nothing_listening_is_not_ready():
    srv = launcher()
    assert srv.grpc_ready() is False
    with pytest.raises(ServerError, match=r"not ready at .* after 1 s"):
        srv.wait_ready(1.0, srv.grpc_url, protocol="grpc")


def test_the_wait_ends_when_the_grpc_front_starts_serving():
    srv = launcher()
    thread, started = serve_later(srv.ports.grpc, ready=True, after_s=1.5)
    try:
        begun = time.monotonic()
        srv.wait_ready(30.0, srv.grpc_url, protocol="grpc")
        assert time.monotonic() - begun >= 1.0  # it waited for the late listener
        assert srv.grpc_ready() is True
    finally:
        thread.join()
        for server in started:
            server.stop(None)


def test_a_front_whose_triton_is_not_ready_is_not_ready():
    srv = launcher()
    thread, started = serve_later(srv.ports.grpc, ready=False, after_s=0.0)
    thread.join()
    try:
        assert srv.grpc_ready() is False
        # HTTP has no listener at all: serving needs both.
        assert srv.serving() is False
    finally:
        for server in started:
            server.stop(None)
