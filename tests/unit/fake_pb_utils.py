"""A stand-in for the Python backend's ``triton_python_backend_utils``, for unit tests of the
BLS adapters' own logic: tensors, requests, responses with errors, the custom-metrics API, and
BLS calls answered by handlers the test registers per model.

Installed with ``install()`` under the real module's name before an adapter is imported.
The served adapters are tested against Triton itself in tests/server."""

from __future__ import annotations

import sys
import types
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

# model -> async handler(inputs, requested output names) -> outputs | TritonError
Handler = Callable[[dict[str, np.ndarray], list[str]], Awaitable[Any]]
HANDLERS: dict[str, Handler] = {}
CALLS: list[tuple[str, dict[str, np.ndarray]]] = []
LOG: list[tuple[str, str]] = []
METRICS: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
FAMILIES: dict[str, tuple[str, str]] = {}  # name -> (kind, description)

DTYPES = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
          "TYPE_BOOL": np.bool_, "TYPE_STRING": np.object_, "TYPE_UINT8": np.uint8,
          "TYPE_INT8": np.int8, "TYPE_FP16": np.float16}


class Tensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self._name, self._value = name, np.asarray(value)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._value


class TritonError:
    INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None) -> None:
        self._outputs = {t.name(): t for t in output_tensors}
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs.values())

    def outputs(self) -> dict[str, np.ndarray]:
        return {k: t.as_numpy() for k, t in self._outputs.items()}


class InferenceRequest:
    """A request to the adapter (``inputs``) or a BLS call it makes (``async_exec``)."""

    def __init__(self, model_name: str = "", requested_output_names: list[str] | None = None,
                 inputs: list[Tensor] | None = None) -> None:
        self.model_name = model_name
        self._outputs = list(requested_output_names or [])
        self._inputs = {t.name(): t for t in inputs or []}

    def requested_output_names(self) -> list[str]:
        return self._outputs

    async def async_exec(self) -> InferenceResponse:
        given = {k: t.as_numpy() for k, t in self._inputs.items()}
        CALLS.append((self.model_name, given))
        result = await HANDLERS[self.model_name](given, self._outputs)
        if isinstance(result, TritonError):
            return InferenceResponse([], result)
        return InferenceResponse([Tensor(k, v) for k, v in result.items()])


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request._inputs.get(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return response._outputs.get(name)


def triton_string_to_numpy(name: str) -> type:
    return DTYPES[name]


class _Metric:
    def __init__(self, family: str, labels: dict[str, str]) -> None:
        self.key = (family, tuple(sorted(labels.items())))
        METRICS.setdefault(self.key, 0.0)

    def increment(self, amount: float) -> None:
        METRICS[self.key] += amount

    def set(self, value: float) -> None:
        METRICS[self.key] = value


class MetricFamily:
    COUNTER, GAUGE = "counter", "gauge"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name
        FAMILIES[name] = (kind, description)

    def Metric(self, labels: dict[str, str]) -> _Metric:
        return _Metric(self.name, labels)


class Logger:
    @staticmethod
    def log_info(message: str) -> None:
        LOG.append(("info", message))

    @staticmethod
    def log_warn(message: str) -> None:
        LOG.append(("warn", message))

    @staticmethod
    def log_error(message: str) -> None:
        LOG.append(("error", message))


def reset() -> None:
    HANDLERS.clear()
    CALLS.clear()
    LOG.clear()
    METRICS.clear()
    FAMILIES.clear()


def install() -> types.ModuleType:
    """This module under the name the adapters import."""
    module = sys.modules[__name__]
    sys.modules["triton_python_backend_utils"] = module
    return module
