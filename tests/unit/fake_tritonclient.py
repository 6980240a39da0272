"""A stand-in for ``tritonclient``'s request objects and an inference client answering from a
handler, for unit tests of the client library's and the gateway's own logic (what they send,
how they read answers and errors). Against a real Triton: tests/server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

# handler(model, {input name: array}, [output names]) -> {output name: array}; raising an
# InferenceServerException answers an error.
Handler = Callable[[str, dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


class InferInput:
    def __init__(self, name: str, shape: list[int], datatype: str) -> None:
        self.name, self.shape, self.datatype = name, list(shape), datatype
        self.data: np.ndarray | None = None

    def set_data_from_numpy(self, value: np.ndarray) -> None:
        """As tritonclient's: the array's type must be the input's datatype."""
        from tritonclient.utils import np_to_triton_dtype

        assert list(value.shape) == self.shape, (self.name, value.shape, self.shape)
        if np_to_triton_dtype(value.dtype) != self.datatype:
            raise InferenceServerException(
                f"got unexpected datatype {value.dtype} from numpy array, expected "
                f"{self.datatype}")
        self.data = value


class InferRequestedOutput:
    def __init__(self, name: str) -> None:
        self.name = name


class InferenceServerException(Exception):
    def __init__(self, msg: str, status: str | None = None) -> None:
        super().__init__(msg)
        self._msg, self._status = msg, status

    def status(self) -> str | None:
        return self._status

    def message(self) -> str:
        return self._msg


class Result:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)


class Call:
    """One inference as the server saw it."""

    def __init__(self, model: str, inputs: list[InferInput], outputs: list[Any],
                 kwargs: dict[str, Any]) -> None:
        self.model = model
        self.inputs = {i.name: i.data for i in inputs}
        self.dtypes = {i.name: i.datatype for i in inputs}
        self.outputs = [o.name for o in outputs]
        self.kwargs = kwargs


class Client:
    """The synchronous client's ``infer`` (tritonclient.http / .grpc)."""

    def __init__(self, handler: Handler, configs: dict[str, dict] | None = None,
                 protocol: str = "grpc") -> None:
        self.handler = handler
        self.configs = configs or {}
        self.protocol = protocol
        self.calls: list[Call] = []
        self.ready = True

    def infer(self, model: str, inputs: list[InferInput], outputs: list[Any] = (),
              **kwargs: Any) -> Result:
        call = Call(model, inputs, list(outputs), kwargs)
        self.calls.append(call)
        return Result(self.handler(model, call.inputs, call.outputs))

    def get_model_config(self, name: str, **kwargs: Any) -> Any:
        """As each protocol's client answers: HTTP's takes no ``as_json`` and returns the
        config itself; gRPC's returns a protobuf message, or {"config": ...} with
        ``as_json=True``."""
        if self.protocol == "http" and "as_json" in kwargs:
            raise TypeError("get_model_config() got an unexpected keyword argument 'as_json'")
        if name not in self.configs:
            raise InferenceServerException(f"unknown model '{name}'", "StatusCode.NOT_FOUND")
        if self.protocol == "http":
            return self.configs[name]
        return {"config": self.configs[name]} if kwargs.get("as_json") else object()

    def is_model_ready(self, name: str) -> bool:
        self.asked_ready = name
        if isinstance(self.ready, Exception):
            raise self.ready
        return self.ready

    def close(self) -> None:
        pass


class AsyncClient(Client):
    """tritonclient.grpc.aio's ``infer``, with an optional delay per call."""

    def __init__(self, handler: Handler, configs: dict[str, dict] | None = None,
                 delay_s: float = 0.0) -> None:
        super().__init__(handler, configs)
        self.delay_s = delay_s

    async def infer(self, model: str, inputs: list[InferInput],  # type: ignore[override]
                    outputs: list[Any] = (), **kwargs: Any) -> Result:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return Client.infer(self, model, inputs, outputs, **kwargs)

    async def get_model_config(self, name: str, as_json: bool = False,  # type: ignore[override]
                               client_timeout: float | None = None) -> dict:
        self.config_timeouts.append(client_timeout)
        return Client.get_model_config(self, name, as_json=as_json)

    @property
    def config_timeouts(self) -> list[float | None]:
        if not hasattr(self, "_config_timeouts"):
            self._config_timeouts: list[float | None] = []
        return self._config_timeouts


class Module:
    """What the code under test reads as ``tc`` (tritonclient.http or .grpc)."""

    InferInput = InferInput
    InferRequestedOutput = InferRequestedOutput
