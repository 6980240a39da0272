"""What every adapter shares: reading the model config, decoding inputs, per-request errors.

A bad request gets an error response naming the input; the other requests of the same
batch are still answered. Errors carry Triton's codes so that clients can act on them: the
caller's mistakes are INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT: not worth retrying),
faults of ours INTERNAL (500) and a missing embedder UNAVAILABLE (503: retry later).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from ensemble.stages import Placement
from export.registry import KIND, TRUNCATE, Kind


class RequestError(ValueError):
    """A request's input is unusable; the message names the input."""


class ServiceError(RuntimeError):
    """A fault of ours that a later retry may not meet (e.g. an embedder down or late)."""


def decode_texts(name: str, array: np.ndarray) -> list[str]:
    texts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise RequestError(f"{name}: not valid UTF-8 (byte {err.start})") from err
    return texts


def input_array(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError(f"{name}: missing input")
    return tensor.as_numpy()


def optional_array(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def optional_texts(request: Any, name: str) -> list[str] | None:
    array = optional_array(request, name)
    return None if array is None else decode_texts(name, array)


KINDS = {k.value: k for k in Kind}


def read_kinds(request, rows: int) -> list[Kind]:
    """The optional KIND input: one of "query" | "passage" per row; passages by default."""
    texts = optional_texts(request, KIND)
    if texts is None:
        return [Kind.PASSAGE] * rows
    if len(texts) != rows:
        raise RequestError(f"{KIND}: {len(texts)} values for {rows} texts")
    bad = [t for t in texts if t not in KINDS]
    if bad:
        raise RequestError(f"{KIND}: must be 'query' or 'passage', got {bad[0]!r}")
    return [KINDS[t] for t in texts]


def truncation_allowed(request) -> bool:
    flags = optional_array(request, TRUNCATE)
    return True if flags is None else bool(np.all(flags))


def error_code(err: Exception) -> int:
    """The Triton code of ``err``, by kind."""
    if isinstance(err, RequestError):
        return pb_utils.TritonError.INVALID_ARG
    if isinstance(err, ServiceError):
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INTERNAL


def error_response(err: Exception) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(str(err), error_code(err)))


class Adapter:
    """Base of the Triton Python models: subclasses read their inputs and do one batched call."""

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.directory = Path(args["model_repository"]) / args["model_version"]
        self.params = {k: v["string_value"]
                       for k, v in self.model_config.get("parameters", {}).items()}
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"])
            for o in self.model_config["output"]}
        # Fault injection for resilience tests, off unless a config sets these parameters.
        self.fault_delay_s = float(self.params.get("inject_delay_ms", "0")) / 1000.0
        self.fault_error = self.params.get("inject_error", "") == "true"
        # A hung embedder that stays alive: every batch waits while this file exists.
        hold = self.params.get("inject_hold_path", "")
        self.fault_hold = Path(hold) if hold else None
        # Where Triton placed this instance (its instance group: KIND_GPU in a GPU build).
        self.placement = Placement.of_instance(args.get("model_instance_kind", "CPU"),
                                               args.get("model_instance_device_id", "0"),
                                               self.params, self.name)
        self.setup()

    def setup(self) -> None:
        raise NotImplementedError

    def log_placement(self, where: str, notes: list[str]) -> None:
        """Where this instance runs, and why an accelerator it asked for is not used."""
        pb_utils.Logger.log_info(f"{self.name}: instance on {where}")
        for note in notes:
            pb_utils.Logger.log_warn(f"{self.name}: {note}")

    def response(self, outputs: dict[str, np.ndarray], names: set[str] | None = None) -> Any:
        """A response holding ``outputs`` (only ``names`` when given) in the config's dtypes."""
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(k, v.astype(self.output_dtypes[k], copy=False))
            for k, v in outputs.items() if names is None or k in names])

    def run_batched(self, requests: Sequence[Any], read: Callable[[Any], Any],
                    compute: Callable[[list[Any]], list[dict[str, np.ndarray]]]) -> list[Any]:
        """Read every request (bad ones answered with their error), compute the good ones
        together, answer each with its own outputs."""
        responses: list[Any] = [None] * len(requests)
        good, items, wanted = [], [], []
        for i, request in enumerate(requests):
            try:
                items.append(read(request))
                good.append(i)
                wanted.append(set(request.requested_output_names()))
            except RequestError as err:
                responses[i] = error_response(err)
        if good:
            start = time.monotonic()
            try:
                if self.fault_delay_s:
                    time.sleep(self.fault_delay_s)
                while self.fault_hold is not None and self.fault_hold.exists():
                    time.sleep(0.05)
                if self.fault_error:
                    raise RuntimeError("injected fault (parameter inject_error)")
                outputs = compute(items)
                for i, out, names in zip(good, outputs, wanted):
                    responses[i] = self.response(out, names)
            except Exception as err:  # noqa: BLE001 - every request must get an answer
                for i in good:
                    responses[i] = error_response(RuntimeError(f"{self.name}: {err}"))
            if time.monotonic() - start > TRIM_AFTER_S:
                release_free_memory()
        return responses


# A batch that took this long was large (long texts, many rows): the heap pages its
# buffers left free are given back to the system, so that a burst does not stay resident.
TRIM_AFTER_S = 0.25


class BlsAdapter(Adapter):
    """A model that calls others (BLS): each request answered by its own ``run`` coroutine,
    concurrently; a refusal or an unavailable step becomes that request's error response."""

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._answer(r) for r in requests)))

    async def _answer(self, request):
        try:
            return await self.run(request)
        except (RequestError, ServiceError) as err:
            return error_response(err)

    async def run(self, request) -> Any:
        raise NotImplementedError  # pragma: no cover - abstract


def release_free_memory() -> None:
    """glibc's malloc_trim: free heap pages go back to the system (a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def split_rows(array: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(counts)[:-1])
