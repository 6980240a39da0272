"""The gRPC front's own logic against stand-ins for Triton (a grpc.aio server that records the
ModelInfer calls reaching it, and the HTTP stand-in serving the model's config): refusals
never reach it, metadata travels, the held-bytes bound answers UNAVAILABLE, and a call whose
client gave up still completes upstream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aiohttp.test_utils import TestServer
from tritonclient.grpc import service_pb2

from ensemble.front.grpc_front import SERVICE, GrpcFront
from ensemble.server import free_port
from tests.unit.test_front_checks import grpc_request
from tests.unit.test_front_http import stand_in

INFER = f"/{SERVICE.full_name}/ModelInfer"


class Upstream:
    """Triton's gRPC, standing in: answers ModelInfer after ``delay_s``; records what came
    and what finished (a cancelled call never finishes)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.received: list[tuple[str, dict]] = []
        self.finished: list[str] = []

    async def infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = service_pb2.ModelInferRequest.FromString(raw)
        self.received.append((request.id, dict(context.invocation_metadata())))
        await asyncio.sleep(self.delay_s)
        self.finished.append(request.id)
        return service_pb2.ModelInferResponse(model_name=request.model_name,
                                              id=request.id).SerializeToString()


async def started(upstream: Upstream) -> tuple[grpc.aio.Server, int]:
    triton = grpc.aio.server()
    triton.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE.full_name, {"ModelInfer": grpc.unary_unary_rpc_method_handler(
            upstream.infer)}),))
    port = triton.add_insecure_port("127.0.0.1:0")
    await triton.start()
    return triton, port


def run(scenario, delay_s: float = 0.0, max_held: int = 1 << 20, max_abandoned: int = 8):
    async def main():
        upstream = Upstream(delay_s)
        triton, triton_port = await started(upstream)
        async with TestServer(stand_in([])) as configs:
            front = GrpcFront(f"127.0.0.1:{triton_port}", f"{configs.host}:{configs.port}",
                              1 << 24, max_held, max_abandoned)
            port = free_port()
            serving = asyncio.ensure_future(front.serve("127.0.0.1", port))
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    await channel.channel_ready()
                    return await scenario(channel.unary_unary(INFER), upstream)
            finally:
                serving.cancel()
                await triton.stop(None)

    return asyncio.run(main())


def request(rows: int = 1, request_id: str = "r", pad: int = 0) -> bytes:
    message = grpc_request([b"x" * pad] * rows)
    message.id = request_id
    return message.SerializeToString()


def test_a_valid_call_passes_with_its_metadata():
    async def scenario(infer, upstream):
        answer = await infer(request(request_id="a"),
                             metadata=(("triton-grpc-protocol-key", "k"),
                                       ("traceparent", "00-ab-cd-01")))
        assert service_pb2.ModelInferResponse.FromString(answer).id == "a"
        request_id, metadata = upstream.received[0]
        assert request_id == "a" and metadata["triton-grpc-protocol-key"] == "k"
        assert metadata["traceparent"] == "00-ab-cd-01"

    run(scenario)


def test_refusals_never_reach_triton():
    bad = grpc_request([b"a", b"b", b"c"])
    bad.inputs[1].shape[0] = 2**40
    unknown = grpc_request([b"a"])
    unknown.model_name = "nope"
    unloaded, unversion = grpc_request([b"a"]), grpc_request([b"a"])
    unloaded.model_version, unversion.model_version = "99", "-1"

    async def scenario(infer, upstream):
        for message, code, words in (
                (bad, grpc.StatusCode.INVALID_ARGUMENT, "TIMESTAMP"),
                (unknown, grpc.StatusCode.NOT_FOUND, "nope"),
                (unloaded, grpc.StatusCode.NOT_FOUND, "version 99: not loaded (loaded: 1)"),
                (unversion, grpc.StatusCode.INVALID_ARGUMENT, "an integer > 0")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await infer(message.SerializeToString())
            assert caught.value.code() == code and words in caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await infer(b"\xff\xff\xff")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert upstream.received == []

    run(scenario)


def test_messages_held_at_once_are_bounded():
    big = 300_000  # three of these fit in the 1 MiB held at once

    async def scenario(infer, upstream):
        async def call(i: int) -> str:
            try:
                await infer(request(pad=big, request_id=str(i)))
                return "answered"
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                assert "retry later" in err.details()
                return "refused"

        outcomes = await asyncio.gather(*(call(i) for i in range(8)))
        assert outcomes.count("answered") >= 1 and outcomes.count("refused") >= 4
        assert len(upstream.received) == outcomes.count("answered")
        assert await call(99) == "answered"  # every byte given back

    run(scenario, delay_s=0.3)


def test_a_call_whose_deadline_expires_completes_upstream():
    async def scenario(infer, upstream):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await infer(request(request_id="late"), timeout=0.1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(40):
            if upstream.finished:
                break
            await asyncio.sleep(0.05)
        assert upstream.finished == ["late"]

    run(scenario, delay_s=0.5)


def test_abandoned_calls_still_running_upstream_are_bounded():
    """Clients that give up at once, again and again: once three calls run upstream for
    nobody, new calls wait in the front; those that give up while waiting never reach
    Triton, and a patient one goes on as soon as one of the three ends."""
    async def scenario(infer, upstream):
        codes = []
        for i in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await infer(request(request_id=f"storm {i}"), timeout=0.05)
            codes.append(caught.value.code())
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 10
        assert len(upstream.received) == 3  # the other seven never reached Triton
        start = asyncio.get_running_loop().time()
        answer = await infer(request(request_id="patient"), timeout=5)
        assert service_pb2.ModelInferResponse.FromString(answer).id == "patient"
        assert asyncio.get_running_loop().time() - start > 0.3  # it waited for one to end
        assert [r for r, _ in upstream.received][-1] == "patient"

    run(scenario, delay_s=1.0, max_abandoned=3)


def test_the_stand_in_would_see_a_cancellation():
    """The check above can fail: the same call straight to the stand-in, with the same
    deadline, is cancelled there and never finishes."""
    async def main():
        upstream = Upstream(0.5)
        triton, port = await started(upstream)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary(INFER)(request(request_id="late"), timeout=0.1)
        await asyncio.sleep(0.8)
        await triton.stop(None)
        return upstream

    upstream = asyncio.run(main())
    assert upstream.received and upstream.finished == []



def test_ports_handed_out_are_distinct_and_avoid_those_given_before():
    """The launcher picks Triton's loopback ports after the public ones were picked but
    before the fronts bind them: the system may hand a free port out twice."""
    from ensemble.server import free_ports

    public = free_ports(3)
    for _ in range(50):
        inner = free_ports(2, set(public))
        assert len(set(inner)) == 2 and not set(inner) & set(public)
