"""The public gRPC port: the whole KServe v2 ``GRPCInferenceService``, inference checked.

Every method is passed to Triton as raw bytes (nothing decoded twice); ``ModelInfer`` and
each message of ``ModelStreamInfer`` are decoded once more here to be checked. Metadata
(the admin key, ``traceparent``) travels with the call. A call is never cancelled upstream:
a client whose deadline expires or who cancels gets its status from gRPC on time, while
Triton finishes the request and its answer is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from ensemble.front.checks import RequestFault, UnknownModel, check_grpc
from ensemble.front.held import Abandoned, HeldBytes, ServerFull
from ensemble.front.specs import ModelSpecs, TritonUnavailable

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
INFER = "ModelInfer"  # checked here; so is each message of ModelStreamInfer
STATUS = {UnknownModel: grpc.StatusCode.NOT_FOUND, RequestFault: grpc.StatusCode.INVALID_ARGUMENT,
          ServerFull: grpc.StatusCode.UNAVAILABLE, TritonUnavailable: grpc.StatusCode.UNAVAILABLE}
REPOSITORY = {"RepositoryModelLoad", "RepositoryModelUnload"}


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def refusal(message: str, request: service_pb2.ModelInferRequest | None) -> bytes:
    """A stream message refused in the stream, with its request's id when it has one."""
    answer = service_pb2.ModelStreamInferResponse(error_message=message)
    if request is not None:
        answer.infer_response.id = request.id
        answer.infer_response.model_name = request.model_name
    return answer.SerializeToString()


def forwarded(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The client's metadata less what gRPC itself sets."""
    return tuple((k, v) for k, v in context.invocation_metadata() or ()
                 if not k.startswith((":", "grpc-")) and k != "user-agent")


class GrpcFront:
    def __init__(self, triton_grpc: str, triton_http: str, max_message_bytes: int,
                 max_held_bytes: int, max_abandoned: int = 8) -> None:
        self.triton_grpc = triton_grpc
        self.max_message_bytes = max_message_bytes
        # Inference messages held at once (received, until Triton has taken them): past this
        # a call is refused at once, as the HTTP front refuses bodies.
        self.held = HeldBytes(max_held_bytes)
        self.abandoned = Abandoned(max_abandoned)
        self.specs = ModelSpecs(triton_http)
        self.channel: grpc.aio.Channel | None = None
        self.background: set[asyncio.Task] = set()

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {}
        for method in SERVICE.methods:
            if method.client_streaming:
                methods[method.name] = grpc.stream_stream_rpc_method_handler(
                    self._stream(method.name))
            else:
                methods[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(method.name))
        return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)

    def _path(self, name: str) -> str:
        return f"/{SERVICE.full_name}/{name}"

    def _keep(self, task: asyncio.Task) -> asyncio.Task:
        """Hold a task that must outlive the call that started it."""
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        # An answer nobody waits for any more, error or not, is dropped without a warning.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    @staticmethod
    def parse(raw: bytes) -> service_pb2.ModelInferRequest:
        try:
            return service_pb2.ModelInferRequest.FromString(raw)
        except DecodeError as err:
            raise RequestFault(f"request: not a ModelInferRequest ({err})") from err

    async def check(self, request: service_pb2.ModelInferRequest) -> None:
        """Raises the RequestFault for which an inference request is refused."""
        spec = await self.specs.get(request.model_name)
        if spec is None:
            raise UnknownModel(f"model '{request.model_name}': no such model is loaded")
        spec.check_version(request.model_version)
        check_grpc(spec, request)

    def _unary(self, name: str):
        upstream_path = self._path(name)

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            assert self.channel is not None
            held = 0
            if name == INFER:
                try:
                    self.held.take(len(raw))
                    held = len(raw)
                    await self.check(self.parse(raw))
                    # Cancelled here when the client gives up while it waits: never sent.
                    await self.abandoned.admitted()
                except (RequestFault, ServerFull, TritonUnavailable) as refused:
                    self.held.give(held)
                    await context.abort(STATUS[type(refused)], str(refused))
                except asyncio.CancelledError:
                    self.held.give(held)
                    raise
            elif name in REPOSITORY:
                self.specs.forget()
            call = self.channel.unary_unary(upstream_path)(raw, metadata=forwarded(context))
            # Shielded: this handler may be cancelled (deadline, client gone), the call not.
            task = self._keep(asyncio.ensure_future(call))
            task.add_done_callback(lambda _: self.held.give(held))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:  # the client's deadline passed, or it cancelled
                if name == INFER:
                    self.abandoned.track(task)
                raise
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE:  # no answer from Triton itself
                    details = f"Triton did not answer: {details}"
                elif code == grpc.StatusCode.NOT_FOUND and name == INFER:
                    # The front found the model loaded a moment ago: it is being reloaded.
                    self.specs.forget()
                    code = grpc.StatusCode.UNAVAILABLE
                    details = f"not available right now (being loaded again): {details}"
                await context.abort(code, details)
                raise  # unreachable: abort raises

        return handle

    def _stream(self, name: str):
        upstream_path = self._path(name)

        async def handle(requests: AsyncIterator[bytes],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            assert self.channel is not None
            call = self.channel.stream_stream(upstream_path)(metadata=forwarded(context))
            answers: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def send() -> None:
                # Refused messages are answered in the stream; the rest go on to Triton.
                try:
                    async for raw in requests:
                        request = None
                        try:
                            self.held.take(len(raw))
                        except ServerFull as full:
                            await answers.put(refusal(str(full), None))
                            continue
                        try:
                            request = self.parse(raw)
                            await self.check(request)
                            await call.write(raw)
                        except (RequestFault, TritonUnavailable) as fault:
                            await answers.put(refusal(str(fault), request))
                        finally:
                            self.held.give(len(raw))
                except (asyncio.CancelledError, grpc.aio.AioRpcError):
                    pass  # the client is gone: close our side, let Triton finish
                finally:
                    await call.done_writing()

            async def receive() -> None:
                try:
                    async for raw in call:
                        await answers.put(raw)
                except grpc.aio.AioRpcError as err:
                    await answers.put(refusal(err.details() or str(err.code()), None))
                finally:
                    await sending
                    await answers.put(None)

            sending = self._keep(asyncio.ensure_future(send()))
            self._keep(asyncio.ensure_future(receive()))
            while (answer := await answers.get()) is not None:
                yield answer

        return handle

    async def serve(self, host: str, port: int) -> None:
        options = channel_options(self.max_message_bytes)
        self.channel = grpc.aio.insecure_channel(self.triton_grpc, options=options)
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((self.handler(),))
        if server.add_insecure_port(f"{host}:{port}") == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        await server.start()
        try:
            await server.wait_for_termination()
        finally:
            await server.stop(grace=5)
            await self.channel.close()
            await self.specs.close()
